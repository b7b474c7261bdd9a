"""``python -m benchmarks.grid``: see ``benchmarks/grid/__init__.py`` and ``--help``."""

from .cli import main

main()
