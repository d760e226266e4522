"""``python -m usersegments`` runs the command line."""

from usersegments.cli import main

raise SystemExit(main())
