"""The README's Quick Start runs as written against the shared reference checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_code() -> str:
    text = README.read_text()
    section = text.split("## Quick Start (JAX)", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python block under '## Quick Start (JAX)'"
    return match.group(1)


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in text and "python -m pytest -q" in ci
    # The fast subset deselects a marker that pytest knows (--strict-markers refuses others).
    assert 'python -m pytest -q -m "not slow"' in text
    pyproject = (README.parent / "pyproject.toml").read_text()
    assert '"slow: ' in pyproject and "--strict-markers" in pyproject
    assert "pip install torch==2.13.0" in text and "torch==2.13.0" in ci


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
