"""Connection settings: explicit arguments first, then ``HUTCH_URL`` / ``HUTCH_API_KEY``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hutch.sdk._exceptions import ConfigurationError

DEFAULT_URL = "http://127.0.0.1:7070"
URL_ENV = "HUTCH_URL"
API_KEY_ENV = "HUTCH_API_KEY"


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Where the Hutch server is and how to authenticate to it.

    Build one with :meth:`load`, which fills what was not given from the environment; the
    constructor takes the values as they are.

    Attributes:
        base_url: The server's URL, e.g. ``"http://127.0.0.1:7070"`` (no trailing slash).
        api_key: The API key sent as ``Authorization: Bearer``, or ``None`` for none.
        connect_timeout: Seconds to wait for a TCP connection to the server.
        request_timeout: Seconds to wait for the answer to an ordinary request. Streamed
            answers (exec output) have no read timeout: commands run as long as they run.
    """

    base_url: str = DEFAULT_URL
    api_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    request_timeout: float = 60.0

    @classmethod
    def load(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> ConnectionConfig:
        """Resolve the settings: arguments win, then the environment, then the defaults.

        Args:
            base_url: The server URL; defaults to ``$HUTCH_URL``, then ``http://127.0.0.1:7070``.
            api_key: The API key; defaults to ``$HUTCH_API_KEY``, then no key.
            environ: The environment to read (``os.environ`` when omitted).

        Raises:
            ConfigurationError: The URL is not an ``http://`` or ``https://`` URL.
        """
        env = os.environ if environ is None else environ
        url = base_url or env.get(URL_ENV) or DEFAULT_URL
        key = api_key if api_key is not None else (env.get(API_KEY_ENV) or None)
        return cls(base_url=normalize_base_url(url), api_key=key)


def normalize_base_url(url: str) -> str:
    """Check that ``url`` is an http(s) URL and strip its trailing slash."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"the Hutch server URL {url!r} is not an http:// or https:// URL; "
            f"pass base_url= or set {URL_ENV}, e.g. {DEFAULT_URL}"
        )
    return text.rstrip("/")
