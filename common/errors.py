"""The one error class for a problem with what the user gave: a path, a value, a file's contents.

Every ``clipvip`` command prints a :class:`UserError` as one line on stderr and exits with code 2;
it catches nothing broader, so any other exception is a bug and shows its traceback. Libraries
raise it (or a subclass naming the kind of input, such as ``ConfigError`` or ``ManifestError``)
only where the input is at fault, and the message names the input and the fix.

It is a ``ValueError``, so Python callers that catch ``ValueError`` around a bad value keep
working; :class:`MissingInputError` is also a ``FileNotFoundError``.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message names the input and how to fix it."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file or folder that is not where the user said."""
