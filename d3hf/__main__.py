"""``python -m d3hf``: the command line."""

import sys

from .commands.cli import main

sys.exit(main())
