"""The base class of every error that a command line prints as one line and exits on, and the
one error exit the command lines share."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class MarlJaxError(Exception):
    """A problem with the user's input or files; ``str(err)`` is one line saying what to do."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (whitespace runs collapsed)."""
    return " ".join(str(err).split())


def cli_main(body: Callable[[], int]) -> int:
    """Runs a command line's ``body`` and returns its exit status: a :class:`MarlJaxError`
    becomes ``error: <one line>`` on stderr and status 2. Orbax's absl notices are silenced
    (they are not for users)."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        return body()
    except MarlJaxError as err:
        print("error: " + one_line(err), file=sys.stderr)
        return 2
