"""report.html in a real browser: headless Chromium (Debian's package; ``.ci/run`` installs it)
loads the page offline, and the page's own check (``#render-status``) must say that every chart
rendered with no script error; a screenshot is taken too. Skipped only where no Chromium
executable is found."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tearsheet_run import make_run

from marl_jax.run.tearsheet import write_tearsheet

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM`` or the first candidate on PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named)
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


BROWSER = chromium()
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no Chromium executable on PATH (apt-get install -y chromium; .ci/run does)",
)


def headless(page: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    """Runs headless Chromium on ``page`` with its own profile, offline, for up to 15 s of the
    page's virtual time."""
    command = [
        BROWSER,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        # No network at all: a page that needed one would fail to render.
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=15000",
        *flags,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def render_status(dom: str) -> dict[str, str]:
    """The attributes the page's own check wrote on ``#render-status``."""
    tag = re.search(r'<p id="render-status"[^>]*>', dom)
    assert tag, "no #render-status in the rendered page"
    return {k: html.unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', tag.group(0))}


def test_the_charts_render_in_chromium_with_no_error(tmp_path):
    run = make_run(tmp_path / "run", folds=3)
    page = write_tearsheet(run)
    shot = tmp_path / "tearsheet.png"
    done = headless(
        page, tmp_path / "profile", "--dump-dom", "--window-size=1280,2400", f"--screenshot={shot}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status = render_status(done.stdout)
    assert status.get("done") == "1", f"the page's check never ran: {status}"
    assert json.loads(status["errors"]) == []
    assert int(status["expected"]) == done.stdout.count('class="plotly-graph-div') == 1
    assert int(status["rendered"]) == int(status["expected"])
    # The figure drew its five panels' axes (each with ticks), their titles and the folds.
    ticks = re.findall(r'class="([xy])(\d*)tick"', done.stdout)
    assert {axis for axis in ticks if axis[0] == "y"} == {
        ("y", ""),
        *(("y", str(i)) for i in range(2, 6)),
    }
    drawn = re.findall(r'class="annotation-text"[^>]*data-unformatted="([^"]*)"', done.stdout)
    for label in (
        "fold 0",
        "fold 2",
        "drawdown of the equity from its peak",
        "the policy's position",
    ):
        assert html.escape(label, quote=True) in drawn or label in drawn, drawn
    assert shot.stat().st_size > 50_000  # a page of charts and tables, not a blank one


def test_a_broken_page_is_reported_by_its_own_check(tmp_path):
    """The check can fail: with plotly.js removed, no chart renders and an error is recorded."""
    run = make_run(tmp_path / "run", n_bars=80, folds=1)
    page = write_tearsheet(run)
    text = page.read_text()
    text = re.sub(r"<script type=\"text/javascript\">.*?</script>", "", text, count=1, flags=re.S)
    page.write_text(text)
    done = headless(page, tmp_path / "profile", "--dump-dom")
    status = render_status(done.stdout)
    assert status["rendered"] == "0" and status["expected"] == "1"
    assert "Plotly" in status["errors"]
