"""``hutch create``'s options for a sandbox's limits and secrets."""

from __future__ import annotations

import argparse
import os


def add_lifetime_options(parser: argparse.ArgumentParser) -> None:
    # NB: --sleep-after, --keep-alive and the other lifecycle options: cli/_lifecycle.py.
    parser.add_argument(
        "--pids-limit",
        type=int,
        metavar="N",
        help="maximum number of processes (default: the server's, 512)",
    )
    parser.add_argument(
        "--secret",
        metavar="NAME[=VALUE]",
        action="append",
        help="an environment variable stored encrypted and never shown again; NAME alone "
        "takes the value from this shell's environment (keeps it out of `ps`); repeatable",
    )
    parser.add_argument(
        "--ca-cert",
        metavar="FILE",
        action="append",
        help="a PEM file of CA certificates the sandbox trusts (e.g. a company's TLS-"
        "intercepting proxy's); repeatable",
    )


def secrets_from(specs: list[str] | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``["A=1", "B"]`` -> ``{"A": "1", "B": $B}``; SystemExit(2) with a message if ``B`` is
    unset (argparse's way to refuse an argument)."""
    env = dict(os.environ) if environ is None else environ
    secrets: dict[str, str] = {}
    for spec in specs or ():
        name, sep, value = spec.partition("=")
        if not name:
            raise SystemExit(f"hutch: error: --secret {spec!r}: give NAME=VALUE or NAME")
        if not sep:
            if name not in env:
                raise SystemExit(
                    f"hutch: error: --secret {name}: ${name} is not set here; "
                    f"export it or pass --secret {name}=VALUE"
                )
            value = env[name]
        secrets[name] = value
    return secrets


def ca_certificates_from(files: list[str] | None) -> list[str]:
    """The PEM text of each ``--ca-cert FILE``; SystemExit(2) with a message if one cannot be
    read (the server checks that it holds certificates: invalid_ca_certificate)."""
    pems: list[str] = []
    for name in files or ():
        try:
            with open(name, encoding="utf-8") as f:
                pems.append(f.read())
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not PEM text"
            raise SystemExit(f"hutch: error: --ca-cert {name}: {reason}") from None
    return pems
