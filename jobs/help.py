"""The help formatter every ``clipvip`` command uses: descriptions and examples kept as written,
and each option's default shown where it has one and its help does not already give it."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, "", False, [], argparse.SUPPRESS)
                or action.option_strings == [] or action.nargs == 0):
            return text
        return f"{text} (default: {default})"
