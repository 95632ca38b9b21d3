"""`python -m pixword_lit.cli ...`: the `pixword` command."""

import sys

from pixword_lit.cli import main

sys.exit(main())
