"""What every ``wirespeed`` command shares on its command line.

One-line errors with exit status 2 (argparse's default prints the whole usage first), argument
types for the values several commands take, and the ``--loop`` / ``--log-level`` switches of the
commands that run an event loop. Standard library only, so any command module can import it
without pulling in the others (``wirespeed.cli`` imports the command modules).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["OneLineParser", "add_loop_arguments", "positive_seconds"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (``PROG: error: REASON``, no usage dump) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds greater than zero."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_loop_arguments(parser: argparse.ArgumentParser, *, log_level: bool = True) -> None:
    """``--loop uvloop|asyncio`` and (unless ``log_level=False``) ``--log-level``."""
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop implementation (default %(default)s)",
    )
    if log_level:
        parser.add_argument(
            "--log-level",
            choices=("debug", "info", "warning", "error"),
            default="info",
            help="(default %(default)s)",
        )
