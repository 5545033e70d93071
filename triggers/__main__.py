"""`python -m triggers` is the `retrain-trigger` command."""

from triggers.cli import main

raise SystemExit(main())
