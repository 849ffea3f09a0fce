"""`python -m hutch.cli`: the same as the `hutch` command."""

from hutch.cli import main

raise SystemExit(main())
