"""How the command line speaks: the library names its parameters in backticks (`keep_rows`); the
command shows them as the verb's flags (--keep-rows)."""

from __future__ import annotations

import argparse
import re

__all__ = ["flags_named"]


def flags_named(message: str, parser: argparse.ArgumentParser | None) -> str:
    """The library's `parameter` names in ``message`` as this verb's flags (`keep_rows` →
    --keep-rows); a name the verb has no flag for loses its backticks only."""
    flags = {}
    for action in parser._actions if parser is not None else []:
        longest = max(action.option_strings, key=len, default=None)
        if longest and longest.startswith("--"):
            flags.setdefault(action.dest, longest)

    def flag(match: re.Match) -> str:
        name = match.group(1)
        return flags.get(name) or flags.get(name.replace("-", "_")) or name

    return re.sub(r"`([A-Za-z_][A-Za-z0-9_-]*)`", flag, message)
