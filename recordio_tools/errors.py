"""The one base class of errors a user can cause: bad arguments, config, data, checkpoints.

This module imports nothing from either package, so every module of recordio_tools and fftrain
can raise a subclass of `UserError` (re-exported as `fftrain.errors.UserError`). The entry points
(`recordio_tools`, `fftrain`, `fftrain train`) turn one into a single line and exit status
`EXIT_USER_ERROR`; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Input the user can fix (a file, a record, an argument or config key); the message names it."""


class UsageError(UserError, ValueError):
    """Bad arguments or input found by a command; printed as one line."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages joined with '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(error).__name__


def report_user_error(prog: str, error: BaseException, file=None) -> int:
    """Print `prog: error: message` on one line to stderr; return the exit status for it."""
    print(f"{prog}: error: {one_line(error)}", file=file or sys.stderr)
    return EXIT_USER_ERROR
