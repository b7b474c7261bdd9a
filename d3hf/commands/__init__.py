"""The ``d3hf`` command line."""
