"""`python -m clsgen.cli ...`: the same as the `clsgen` command."""

import sys

from . import main

sys.exit(main())
