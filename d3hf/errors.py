"""One base class for the errors a user can cause and fix.

The command line turns a ``D3HFError`` into a one-line message; anything else is a bug and
surfaces with its traceback. Most subclasses are also ``ValueError`` so that code written
against the earlier classes keeps catching them.
"""

from __future__ import annotations


class D3HFError(Exception):
    """Something the user can fix: a setting, a file, a dataset, a Hub repo."""


class ConfigError(D3HFError, ValueError):
    """A setting is out of range, of the wrong type, or inconsistent with another one."""


class OutputError(D3HFError, ValueError):
    """An output location that d3hf refuses to write: it would lose files d3hf did not create."""


class ArtifactError(D3HFError, ValueError):
    """The artifact is inconsistent, tampered with or truncated."""


class DataError(D3HFError, ValueError):
    """A problem with the user's dataset: its path, columns, images or splits."""
