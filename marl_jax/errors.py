"""The base class of every error that a command line prints as one line and exits on, and the
one error exit the command lines share."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator


class MarlJaxError(Exception):
    """A problem with the user's input or files; ``str(err)`` is one line saying what to do."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (whitespace runs collapsed)."""
    return " ".join(str(err).split())


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """Within the block, a Python warning that the filters let through is printed as one plain
    line, ``warning: <message>`` on stderr, each text once (no category, file or source line);
    the warning filters and printer are restored after."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = one_line(message if isinstance(message, Warning) else Warning(message))
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def cli_main(body: Callable[[], int]) -> int:
    """Runs a command line's ``body`` and returns its exit status: a :class:`MarlJaxError`
    becomes ``error: <one line>`` on stderr and status 2, and warnings plain lines
    (:func:`plain_warnings`). Orbax's absl notices are silenced (they are not for users)."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        with plain_warnings():
            return body()
    except MarlJaxError as err:
        print("error: " + one_line(err), file=sys.stderr)
        return 2
