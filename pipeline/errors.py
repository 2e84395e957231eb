"""Curation's run-level errors, importable without Ray (the CLI maps them to exit codes)."""

from __future__ import annotations

from common.errors import UserError


class ManifestError(UserError):
    """The manifest cannot be processed; the message names the part, row, column and fix."""


class SetupError(UserError):
    """The run cannot start as configured; the message names the setting and the fix."""


class CurationError(RuntimeError):
    """The run ended, but not as it should: shards missing, or too many rows failed."""
