"""`python -m greenservers COMMAND`: the command line of greenservers.cli."""

import sys

from .cli import main

sys.exit(main())
