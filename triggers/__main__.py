"""`python -m triggers` is the `retrain-trigger` command."""

from triggers.tools.cli import main

raise SystemExit(main())
