"""`hutch serve`: build the default image if needed, then serve the API until told to stop."""

from __future__ import annotations

import sys
from typing import TextIO

import uvicorn

from hutch.proxy import PreviewRoutes, front_protocol
from hutch.runtime import ImageStore, default_recipe_dir, ensure_default_image, render_progress_bar
from hutch.server._app import create_app
from hutch.server._config import ServerConfig
from hutch.server._drain import DRAIN_SECONDS, DrainingServer
from hutch.server._logging import configure_logging
from hutch.server._malloc_arenas import bound_malloc_arenas


def prepare_default_image(config: ServerConfig, out: TextIO) -> None:
    """Build the default image the first time (with a progress bar), or when its recipe changed."""
    store = ImageStore(config.image_root)
    ensure_default_image(
        store,
        default_recipe_dir(),
        cache_dir=config.home / "cache",
        progress=render_progress_bar(out),
    )


def run(config: ServerConfig, *, out: TextIO = sys.stderr) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both). Sandboxes outlive the server."""
    bound_malloc_arenas()  # NB: first: before any thread of ours allocates
    config.home.mkdir(parents=True, exist_ok=True)
    configure_logging(
        level=config.log_level,
        log_format=config.log_format,
        levels=config.log_levels,
        audit_file=config.home / "audit.log",
    )
    if config.build_default_image:
        prepare_default_image(config, out)

    def announce_key(key: str) -> None:
        out.write(
            "\nGenerated an admin API key (shown once, stored hashed):\n\n"
            f"    export HUTCH_API_KEY={key}\n\n"
        )
        out.flush()

    previews = PreviewRoutes(config.preview_domain)
    app = create_app(config, on_new_key=announce_key, previews=previews)

    def drain() -> None:
        services = getattr(app.state, "services", None)
        if services is not None:
            services.draining.set()

    server = DrainingServer(
        uvicorn.Config(
            app,
            # Preview hosts are taken over by the proxy before uvicorn parses them.
            http=front_protocol(previews),
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=DRAIN_SECONDS,
        ),
        on_drain=drain,
    )
    server.run()
