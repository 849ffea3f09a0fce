"""The API's services: sandbox lifecycle (create, get-or-create, destroy, expiry, recovery
after a crash), API keys and the sealed secrets of sandboxes.

They keep the store (what was promised to clients) and the host (`hutch.node`,
`hutch.runtime`: what runs) in step. They may import `hutch.node`, `hutch.runtime`, the store
and the API's errors and models, never a route.
"""
