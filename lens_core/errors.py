"""The one exception type for bad input (a table, a flag, a file): `lens` prints its message as one line
and exits with status 1, without a traceback.

Kept free of imports so that `lens_core.cli` can catch it without loading pandas.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message names the file and, where there is one, the row."""
