"""Errors the user can fix, and the one place where every command reports them.

A `UserError` is a mistake in what the user gave, or in the machine under it: a config key, a data
source, an audio file, a checkpoint, a full disk. Its message names the file or key and says what to
do. Every command prints it as one line, `error: ...`, and exits with status 2; any other exception is
a bug and keeps its traceback. `--debug` or ASIT_DEBUG=1 shows the traceback of a user error too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2  # what argparse exits with for a bad command line: the same kind of mistake


class UserError(Exception):
    pass


class InputError(UserError, ValueError):
    """A config value, data source, audio file or checkpoint that cannot be used."""


class MissingError(UserError, FileNotFoundError):
    """A file or folder the user named is not there."""


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error in the input too (also: ASIT_DEBUG=1)")


def run_command(fn: Callable[[], object], debug: bool = False) -> int:
    """`fn()`: exit status 0, or 2 after printing a user error as one line on stderr."""
    try:
        fn()
    except UserError as err:
        if debug or os.environ.get("ASIT_DEBUG", "0") not in ("", "0"):
            raise
        # One line even where the message quotes a library's own (torch's and YAML's span lines).
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
