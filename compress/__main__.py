"""`python -m compress ...` = the `compress` command (for environments where the script is not on PATH)."""

import sys

from compress.cli.main import main

sys.exit(main())
