"""`python -m cli` == `yolor`."""

from cli import main

raise SystemExit(main())
