"""The README: short, its commands real, its links alive, its Python snippet runnable."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from marl_jax import console

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_LINES = 160
# Subcommands whose first argument names a subcommand of their own.
NESTED = {"data", "bridge", "config"}


def readme() -> str:
    return README.read_text()


def quick_start_code() -> str:
    section = readme().split("## Bridge", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python block under '## Bridge'"
    return match.group(1)


def command_lines(text: str) -> list[list[str]]:
    """Every ``marl-jax ...`` line of a page's bash blocks, as tokens (comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("marl-jax"):
                lines.append(shlex.split(line))
    return lines


def named_subcommands(text: str) -> set[str]:
    """The subcommands a page names: in its command lines and its inline code."""
    named = {tokens[1] for tokens in command_lines(text) if len(tokens) > 1}
    return (named | set(re.findall(r"`marl-jax ([a-z]+)", text))) - {"--help"}


def help_text(argv: list[str], capsys) -> str:
    """``marl-jax ARGV --help`` in this process: its output; fails unless it exits 0."""
    try:
        code = console.main([*argv, "--help"])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr().out
    assert code in (0, None), f"marl-jax {' '.join(argv)} --help exited {code}"
    return out


def test_readme_is_short():
    assert len(readme().splitlines()) <= MAX_LINES


def test_readme_commands_match_ci():
    text = readme()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in text and "python -m pytest -q" in ci
    # The fast subset deselects a marker that pytest knows (--strict-markers refuses others).
    assert 'python -m pytest -q -m "not slow"' in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"slow: ' in pyproject and "--strict-markers" in pyproject
    assert "pip install torch==2.13.0" in text and "torch==2.13.0" in ci
    assert "cuda12" in text and "cuda12 = " in pyproject


def test_every_subcommand_the_readme_names_exists():
    named = named_subcommands(readme())
    assert {"train", "walkforward", "data", "decide", "backtest", "export", "bridge"} <= named
    unknown = named - set(console.COMMANDS)
    assert not unknown, f"the README names marl-jax subcommands that do not exist: {unknown}"


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_every_command_line_takes_its_flags(page, capsys):
    """Each ``marl-jax`` line of the README and the docs: its subcommand exists and its
    ``--help`` names every flag the line uses."""
    lines = command_lines((ROOT / page if page == "README.md" else DOCS / page).read_text())
    assert page != "README.md" or len(lines) >= 8
    for tokens in lines:
        if len(tokens) == 1 or tokens[1].startswith("-"):
            assert help_text(tokens[1:2] if len(tokens) > 1 else [], capsys)
            continue
        argv = tokens[1:3] if tokens[1] in NESTED else tokens[1:2]
        text = help_text(argv, capsys)
        assert argv[0] in console.COMMANDS, f"{page}: no subcommand {argv[0]!r}"
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(tokens[1:])):
            assert re.search(rf"{re.escape(flag)}\b", text), f"{' '.join(tokens)}: no {flag}"


def test_readme_and_docs_links_resolve():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"


@pytest.mark.slow
def test_quick_start_runs_on_the_reference_checkpoint(reference_ckpt_path, capsys):
    code = quick_start_code()
    assert '"strategic_marl_initial.pt"' in code
    namespace: dict = {}
    exec(
        compile(
            code.replace("strategic_marl_initial.pt", str(reference_ckpt_path)), "README", "exec"
        ),
        namespace,
    )
    printed = capsys.readouterr().out
    for name in ("mlmi", "nwrqk", "mmd"):
        assert re.search(rf"^{name}: action [012], probabilities \[", printed, re.M)
    assert "critic value:" in printed
    # The explicitly built modules and the checkpoint's inferred ones agree.
    checkpoint = namespace["checkpoint"]
    for name, actor in namespace["agents"].items():
        assert actor == checkpoint.modules[name]
        out = actor.apply(checkpoint.agents[name], namespace["states"][name], deterministic=True)
        np.testing.assert_allclose(np.asarray(out["action_probs"]).sum(-1), 1.0, rtol=1e-6)
