"""``python -m apr_async`` runs the command-line interface."""

from apr_async.cli.main import main

raise SystemExit(main())
