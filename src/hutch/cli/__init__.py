"""The ``hutch`` command: run the server, and manage sandboxes, images and keys from a shell."""

from hutch.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
