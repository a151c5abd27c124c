"""``python -m mambakit``: the command line (see :mod:`mambakit.cli`)."""

import sys

from .cli import main

sys.exit(main())
