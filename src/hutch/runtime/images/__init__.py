"""Images: a content-addressed store of flattened root filesystems, and how images get in.

Owns the store, the default image built from its recipe with debootstrap, recipe images,
imports of OCI archives and registry images, and Dockerfile builds. May import
`hutch.runtime._idmap` (images are stored shifted into the sandboxes' uid range); it never
imports `hutch.runtime.container`.
"""
