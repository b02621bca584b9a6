"""The base class of every error that a command line prints as one line and exits on."""

from __future__ import annotations


class MarlJaxError(Exception):
    """A problem with the user's input or files; ``str(err)`` is one line saying what to do."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (whitespace runs collapsed)."""
    return " ".join(str(err).split())
