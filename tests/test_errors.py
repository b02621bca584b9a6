"""The command lines' shared exit: one-line errors, and warnings as plain lines."""

from __future__ import annotations

import warnings

from marl_jax.errors import MarlJaxError, cli_main, plain_warnings


def test_warnings_become_one_plain_line_each_text_once(capsys):
    def body() -> int:
        for _ in range(3):
            warnings.warn("bars.csv: bars are 1440 minutes apart,\n  coarser", stacklevel=1)
        warnings.warn("another thing", UserWarning, stacklevel=1)
        return 0

    assert cli_main(body) == 0
    err = capsys.readouterr().err
    assert err == (
        "warning: bars.csv: bars are 1440 minutes apart, coarser\nwarning: another thing\n"
    )
    assert "UserWarning" not in err and ".py" not in err


def test_the_printer_and_filters_are_restored(capsys):
    before = warnings.showwarning, list(warnings.filters)
    with plain_warnings():
        warnings.warn("inside", stacklevel=1)
    assert (warnings.showwarning, list(warnings.filters)) == before
    assert capsys.readouterr().err == "warning: inside\n"


def test_an_error_is_one_line_and_exit_2(capsys):
    def body() -> int:
        raise MarlJaxError("data.csv, row 3:\n  high < low; fix the row")

    assert cli_main(body) == 2
    assert capsys.readouterr().err == "error: data.csv, row 3: high < low; fix the row\n"
