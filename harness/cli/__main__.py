"""`python -m harness.cli ...`: the `harness` command where it is not installed (torch-only machines)."""

import sys

from harness.cli.main import main

sys.exit(main())
