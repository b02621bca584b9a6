"""``python -m bridge inspect|verify|to-orbax|to-pt``, run as a user would, in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch_asserts import assert_identical

from bridge.torch_reference import build_reference_models

MODEL_NAMES = ("mlmi", "nwrqk", "mmd", "critic")
ACTOR_OUTPUTS = ("action_probs", "logits", "value", "log_prob", "entropy", "attention_weights")
TOLERANCE = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str | os.PathLike, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_inspect_lists_models_and_parameter_counts(reference_ckpt_path):
    result = run_cli("inspect", reference_ckpt_path)
    assert_ok(result)
    expected = {
        name: sum(p.numel() for p in model.parameters())
        for name, model in build_reference_models().items()
    }
    found = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^\s*(mlmi|nwrqk|mmd|critic)\b.*?([\d,]+)\s+param", line)
        if match:
            found[match.group(1)] = int(match.group(2).replace(",", ""))
    assert found == expected, result.stdout
    for class_name in ("MLMIActor", "NWRQKActor", "MMDActor", "CentralizedCritic"):
        assert class_name in result.stdout
    assert "hidden_dims=[256, 128, 64]" in result.stdout  # the inferred configuration
    assert "config_version=1.0" in result.stdout  # the metadata
    assert result.stderr.strip() == ""


def test_verify_passes_on_the_fixture_and_prints_every_output(reference_ckpt_path):
    result = run_cli("verify", reference_ckpt_path)
    assert_ok(result)
    diffs: dict[tuple[str, str], float] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(mlmi|nwrqk|mmd|critic)\s+(\S+)\s.*?([-+0-9.eE]+)\s*$", line)
        if match:
            diffs[(match.group(1), match.group(2))] = float(match.group(3))
    expected = [(name, key) for name in MODEL_NAMES[:3] for key in ACTOR_OUTPUTS]
    expected += [("critic", "value")]
    expected += [("critic", f"agent_values/{name}") for name in MODEL_NAMES[:3]]
    missing = [row for row in expected if row not in diffs]
    assert not missing, f"outputs not reported: {missing}\n{result.stdout}"
    for row, diff in diffs.items():
        assert 0 <= diff <= TOLERANCE, (row, diff)


def test_to_orbax_then_to_pt_reproduces_the_checkpoint(raw_fixture, tmp_path):
    source = tmp_path / "source.pt"
    checkpoint = {
        **raw_fixture,
        "optimizer_states": {
            "critic": {
                "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(512, 13)}},
                "param_groups": [{"lr": 3e-4, "params": [0]}],
            }
        },
        "metrics": {"average_reward": 1.5},
    }
    torch.save(checkpoint, source)
    orbax_dir, back = tmp_path / "models", tmp_path / "back.pt"
    assert_ok(run_cli("to-orbax", source, orbax_dir))
    assert orbax_dir.is_dir()
    assert_ok(run_cli("to-pt", orbax_dir, back))
    before = torch.load(source, map_location="cpu", weights_only=True)
    after = torch.load(back, map_location="cpu", weights_only=True)
    assert_identical(before, after)
    assert_identical(raw_fixture, {k: after[k] for k in raw_fixture})


@pytest.fixture(scope="module")
def raw_fixture(reference_ckpt_path):
    return torch.load(reference_ckpt_path, map_location="cpu", weights_only=True)


class _CodePayload:
    """Unpickling this runs ``open(marker, 'w')``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_input(kind: str, tmp_path: Path) -> Path:
    if kind == "text":
        path = tmp_path / "notes.pt"
        path.write_text("this is not a checkpoint\n" * 3)
    elif kind == "missing":
        path = tmp_path / "absent.pt"
    elif kind == "code":
        path = tmp_path / "evil.pt"
        torch.save({"model_state_dicts": _CodePayload(tmp_path / "pwned")}, path)
    elif kind == "missing-dir":
        path = tmp_path / "no_such_models"
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("inspect", "text"),
        ("verify", "missing"),
        ("to-orbax", "code"),
        ("to-orbax", "text"),
        ("to-pt", "missing-dir"),
    ],
)
def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, command, kind):
    bad = _bad_input(kind, tmp_path)
    output = tmp_path / "out" / ("models" if command == "to-orbax" else "out.pt")
    args = [command, bad] + ([output] if command in ("to-orbax", "to-pt") else [])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(*args)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert message and "\n" not in message, result.stderr
    assert "Traceback" not in result.stderr
    assert str(bad) in message or bad.name in message, message
    assert not output.exists()
    assert not (tmp_path / "pwned").exists()  # the pickled code did not run
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing else written
