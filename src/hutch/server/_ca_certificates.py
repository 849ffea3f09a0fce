"""Extra CA certificates: a sandbox's (`ca_certificates=[pem, ...]`) and the server's
(`HUTCH_CA_CERTIFICATES`, a file of PEM certificates), checked before any sandbox trusts them.

Each is split into single certificates; anything but a parsable X.509 certificate in PEM (a
private key pasted by mistake, DER, a truncated block) is refused, saying which one and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hutch.runtime import split_pem

MAX_CERTIFICATES = 64
MAX_PEM_BYTES = 64 * 1024


def parse_ca_certificates(
    pems: Sequence[str], where: str = "ca_certificates", *, limited: bool = True
) -> tuple[str, ...]:
    """The certificates of `pems`, one PEM block each, in order and each once (`limited`: at
    most MAX_CERTIFICATES of MAX_PEM_BYTES each, as for a request).

    Raises:
        ValueError: one is not a PEM certificate (the message names it and says what to do).
    """
    from cryptography import x509

    found: list[str] = []
    for i, text in enumerate(pems):
        name = f"{where}[{i}]"
        if limited and len(text.encode()) > MAX_PEM_BYTES:
            raise ValueError(f"{name} is larger than {MAX_PEM_BYTES // 1024} KiB")
        blocks = split_pem(text)
        if not blocks:
            raise ValueError(
                f"{name} is not PEM: give the certificate as text starting with "
                "'-----BEGIN CERTIFICATE-----' (convert DER with `openssl x509 -inform der`)"
            )
        for block in blocks:
            kind = block.splitlines()[0].removeprefix("-----BEGIN ").removesuffix("-----")
            if kind != "CERTIFICATE":
                raise ValueError(
                    f"{name} holds a {kind!r} block; only certificates (CERTIFICATE) are "
                    "trusted, and a private key must never be sent"
                )
            try:
                x509.load_pem_x509_certificate(block.encode())
            except ValueError as exc:
                raise ValueError(f"{name} is not a valid X.509 certificate: {exc}") from None
            if block not in found:
                found.append(block)
    if limited and len(found) > MAX_CERTIFICATES:
        raise ValueError(f"{where}: more than {MAX_CERTIFICATES} certificates")
    return tuple(found)


def server_ca_certificates(path: Path | None) -> tuple[str, ...]:
    """The extra CAs of every sandbox: those of `path`, none without one."""
    return () if path is None else read_ca_certificates_file(path)


def read_ca_certificates_file(path: Path) -> tuple[str, ...]:
    """The server's extra CAs from `path`: a CA such as /usr/local/share/ca-certificates/corp.crt,
    or the host's whole bundle (/etc/ssl/certs/ca-certificates.crt, no size limit).

    Raises:
        ValueError: the file cannot be read, or holds anything but certificates.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"HUTCH_CA_CERTIFICATES: cannot read {path}: {exc}") from None
    if not text.strip():
        return ()
    return parse_ca_certificates([text], where=f"HUTCH_CA_CERTIFICATES ({path})", limited=False)
