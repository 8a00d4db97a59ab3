"""`python -m minimoe ...` is the same as the `minimoe` console script."""

from minimoe.cli import main

raise SystemExit(main())
