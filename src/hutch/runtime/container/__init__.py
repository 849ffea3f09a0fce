"""Sandboxes on this host: OCI bundles run with runc, and what each one is made of.

Owns the bundle (`config.json`, seccomp, mounts), the overlay root filesystem and its btrfs
storage, cgroups, the network namespace with its nftables rules, bucket mounts and the agent
bundle bind-mounted into every sandbox. May import `hutch.runtime.images` (a sandbox starts
from an image) and `hutch.runtime._idmap`; nothing in `hutch.runtime.images` imports it.
"""
