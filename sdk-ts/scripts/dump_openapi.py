"""Print Hutch's OpenAPI document (what GET /openapi.json serves) without starting a server.

The app is built in-process and its lifespan never runs, so no runc, no state directory and no
network are touched: the spec is a pure function of the route and model code.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def main() -> None:
    from hutch.server import ServerConfig, create_app

    with tempfile.TemporaryDirectory() as home:
        app = create_app(ServerConfig(home=Path(home), build_default_image=False))
        spec = app.openapi()
    json.dump(spec, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
