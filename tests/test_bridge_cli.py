"""``python -m bridge inspect|verify|to-orbax|to-pt``, run as a user would, in a subprocess."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_asserts import assert_identical

from bridge import pt_file
from bridge.torch_reference import build_reference_models

MODEL_NAMES = ("mlmi", "nwrqk", "mmd", "critic")
ACTOR_OUTPUTS = ("action_probs", "logits", "value", "log_prob", "entropy", "attention_weights")
TOLERANCE = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_ACTOR = {"hidden_dims": [32, 16, 8], "conv_channels": [8, 16, 16]}
SMALL = {**{name: SMALL_ACTOR for name in MODEL_NAMES[:3]}, "critic": {"hidden_dims": [32, 16, 8]}}
# The run directory's checkpoint steps: (step, average reward, torch seed). Step 2 is the best.
RUN_STEPS = ((2, 5.0, 0), (4, 1.0, 1))


def run_cli(
    *args: str | os.PathLike, timeout: float = 300, umask: int | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        umask=-1 if umask is None else umask,
    )


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------- .pt files


def test_inspect_lists_models_and_parameter_counts(reference_ckpt_path):
    result = run_cli("inspect", reference_ckpt_path)
    assert_ok(result)
    assert result.stdout.splitlines()[0] == f"read .pt file {reference_ckpt_path}"
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


def test_inspect_of_a_pt_file_imports_neither_jax_nor_flax(reference_ckpt_path):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['bridge', 'inspect', {str(reference_ckpt_path)!r}]\n"
        "try:\n"
        "    runpy.run_module('bridge', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'orbax', 'optax') if m in sys.modules)\n"
        "print('exit', code, 'imported', heavy)\n"
    )
    result = run_python(code)
    assert result.stdout.splitlines()[-1] == "exit 0 imported []", result.stdout + result.stderr


@pytest.mark.parametrize("configs", [None, SMALL], ids=["default", "small"])
def test_parameter_count_from_the_tensors_matches_pytorch(configs):
    """Every state-dict entry but BatchNorm statistics and buffers such as ``pe``."""
    for name, model in build_reference_models(configs).items():
        expected = sum(p.numel() for p in model.parameters())
        assert pt_file.parameter_count(model.state_dict()) == expected, name


def test_defaults_without_jax_are_the_flax_defaults():
    from marl_jax.models.registry import build_module, module_config

    for name in MODEL_NAMES:
        assert pt_file.default_config(name) == module_config(build_module(name)), name


@pytest.mark.slow
def test_verify_passes_on_the_fixture_and_prints_every_output(reference_ckpt_path):
    result = run_cli("verify", reference_ckpt_path)
    assert_ok(result)
    assert result.stdout.splitlines()[0] == f"read .pt file {reference_ckpt_path}"
    diffs = verify_diffs(result.stdout)
    expected = [(name, key) for name in MODEL_NAMES[:3] for key in ACTOR_OUTPUTS]
    expected += [("critic", "value")]
    expected += [("critic", f"agent_values/{name}") for name in MODEL_NAMES[:3]]
    missing = [row for row in expected if row not in diffs]
    assert not missing, f"outputs not reported: {missing}\n{result.stdout}"
    for row, diff in diffs.items():
        assert 0 <= diff <= TOLERANCE, (row, diff)


def verify_diffs(stdout: str) -> dict[tuple[str, str], float]:
    diffs: dict[tuple[str, str], float] = {}
    for line in stdout.splitlines():
        match = re.match(r"^(mlmi|nwrqk|mmd|critic)\s+(\S+)\s.*?([-+0-9.eE]+)\s*$", line)
        if match:
            diffs[(match.group(1), match.group(2))] = float(match.group(3))
    return diffs


@pytest.fixture(scope="module")
def raw_fixture(reference_ckpt_path):
    return torch.load(reference_ckpt_path, map_location="cpu", weights_only=True)


@pytest.mark.slow
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
    assert_ok(run_cli("to-orbax", source, orbax_dir, umask=0o027))
    assert orbax_dir.is_dir()
    assert file_mode(orbax_dir / "extra_entries.pt") == 0o640  # the umask's mode, not 0600

    # inspect reads the model directory, with the entries kept beside it.
    result = run_cli("inspect", orbax_dir)
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == f"read model directory {orbax_dir}", result.stdout
    assert "  other entries: optimizer_states, metrics" in lines
    assert "config_version=1.0" in result.stdout
    assert "1,451,429 params" in result.stdout  # the same counts as for the .pt file

    result = run_cli("to-pt", orbax_dir, back, umask=0o027)
    assert_ok(result)
    assert result.stdout.splitlines()[0] == f"read model directory {orbax_dir}"
    assert file_mode(back) == 0o640
    before = torch.load(source, map_location="cpu", weights_only=True)
    after = torch.load(back, map_location="cpu", weights_only=True)
    assert_identical(before, after)
    assert_identical(raw_fixture, {k: after[k] for k in raw_fixture})


@pytest.mark.slow
def test_to_pt_of_a_pt_file_keeps_everything_and_gets_the_umask_mode(raw_fixture, tmp_path):
    source, out = tmp_path / "source.pt", tmp_path / "sub" / "out.pt"
    torch.save({**raw_fixture, "metrics": {"average_reward": 0.5}}, source)
    source.chmod(0o600)
    result = run_cli("to-pt", source, out, umask=0o022)
    assert_ok(result)
    assert result.stdout.splitlines() == [f"read .pt file {source}", f"wrote {out}"]
    assert file_mode(out) == 0o644  # the umask's mode, not mkstemp's 0600
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.pt"]  # no temporary left
    assert_identical(
        torch.load(source, map_location="cpu", weights_only=True),
        torch.load(out, map_location="cpu", weights_only=True),
    )


# ----------------------------------------------------------------------------- torch missing

NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def test_without_torch_the_cli_says_which_extra_to_install(tmp_path):
    code = NO_TORCH + (
        "import runpy\n"
        f"sys.argv = ['bridge', 'inspect', {str(tmp_path / 'x.pt')!r}]\n"
        "runpy.run_module('bridge', run_name='__main__')\n"
    )
    result = run_python(code)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: the bridge needs PyTorch: pip install 'marl-jax[torch]'"
    assert result.stdout == ""


def test_without_torch_the_library_says_which_extra_to_install():
    code = NO_TORCH + (
        "import bridge\n"  # the package itself imports neither torch nor JAX
        "for name in ('load_pt_checkpoint', 'read_pt'):\n"
        "    try:\n"
        "        getattr(bridge, name)\n"
        "    except ImportError as err:\n"
        "        print(name, err)\n"
        "try:\n"
        "    import bridge.convert\n"
        "except ImportError as err:\n"
        "    print('bridge.convert', err)\n"
    )
    result = run_python(code)
    assert_ok(result)
    message = "the bridge needs PyTorch: pip install 'marl-jax[torch]'"
    assert result.stdout.splitlines() == [
        f"load_pt_checkpoint {message}",
        f"read_pt {message}",
        f"bridge.convert {message}",
    ]


# ----------------------------------------------------------------------------- runs and steps


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``(RUN, {step: {model: torch state dict}})``: a run directory with checkpoint steps 2
    (the best) and 4 (the latest) of small models, as training writes them."""
    from bridge.convert import torch_to_flax
    from marl_jax.models.registry import build_module
    from marl_jax.run.checkpointer import TrainCheckpointer
    from marl_jax.run.modeldir import model_items

    run = tmp_path_factory.mktemp("runs") / "run"
    run.mkdir()
    (run / "config.yaml").write_text("")  # the defaults: checkpoints in RUN/checkpoints
    modules = {name: build_module(name, SMALL[name]) for name in MODEL_NAMES}
    state_dicts = {}
    with TrainCheckpointer(run / "checkpoints", async_save=False) as checkpointer:
        for step, reward, seed in RUN_STEPS:
            torch.manual_seed(seed)
            models = build_reference_models(SMALL)
            state_dicts[step] = {name: m.state_dict() for name, m in models.items()}
            variables = {n: torch_to_flax(state_dicts[step][n], modules[n]) for n in MODEL_NAMES}
            items = model_items(
                {n: variables[n] for n in MODEL_NAMES[:3]},
                variables["critic"],
                modules,
                {"step": step},
            )
            checkpointer.save(
                step,
                {"x": np.zeros(2, np.float32)},
                metrics={"average_reward": reward},
                models=items,
            )
    return run, state_dicts


@pytest.mark.slow
def test_inspect_and_to_pt_read_a_run_directory(run_dir, tmp_path):
    run, state_dicts = run_dir
    result = run_cli("inspect", run)
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == f"read run directory {run}: best checkpoint, step 2", result.stdout
    assert "metadata: step=2" in result.stdout
    expected = {
        name: sum(p.numel() for p in model.parameters())
        for name, model in build_reference_models(SMALL).items()
    }
    for name, count in expected.items():
        assert any(line.split()[:1] == [name] and f"{count:,d} params" in line for line in lines)
    assert result.stderr.strip() == ""  # no Orbax notes

    out = tmp_path / "latest.pt"
    result = run_cli("to-pt", f"{run}:latest", out)
    assert_ok(result)
    assert result.stdout.splitlines()[0] == f"read run directory {run}: latest checkpoint, step 4"
    written = torch.load(out, map_location="cpu", weights_only=True)
    dicts = written["model_state_dicts"]
    assert_identical(
        {name: state_dicts[4][name] for name in MODEL_NAMES[:3]}, dict(dicts["agents"])
    )
    assert_identical(state_dicts[4]["critic"], dicts["critic"])
    assert written["metadata"]["step"] == 4


@pytest.mark.slow
def test_verify_reads_a_checkpoint_step(run_dir):
    run, _ = run_dir
    step = run / "checkpoints" / "4"
    result = run_cli("verify", step)
    assert_ok(result)
    assert result.stdout.splitlines()[0] == f"read checkpoint step 4 in {step.parent}"
    diffs = verify_diffs(result.stdout)
    assert len(diffs) == 3 * (len(ACTOR_OUTPUTS) + 1) + 4, result.stdout
    for row, diff in diffs.items():
        assert 0 <= diff <= TOLERANCE, (row, diff)
    assert "verify: all outputs within" in result.stdout


# ----------------------------------------------------------------------------- bad input


class _CodePayload:
    """Unpickling this runs ``open(marker, 'w')``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_input(kind: str, tmp_path: Path, run_dir) -> str:
    if kind == "text":
        path = tmp_path / "notes.pt"
        path.write_text("this is not a checkpoint\n" * 3)
    elif kind == "truncated":
        path = tmp_path / "cut.pt"
        torch.save({"model_state_dicts": {"critic": {"w": torch.zeros(64, 64)}}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "missing":
        path = tmp_path / "absent.pt"
    elif kind == "code":
        path = tmp_path / "evil.pt"
        torch.save({"model_state_dicts": _CodePayload(tmp_path / "pwned")}, path)
    elif kind == "missing-dir":
        path = tmp_path / "no_such_models"
    elif kind == "other-folder":
        path = tmp_path / "photos"
        path.mkdir()
        (path / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    elif kind == "unknown-step":
        return f"{run_dir[0]}:9"
    else:
        raise AssertionError(kind)
    return str(path)


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("inspect", "text"),
        ("inspect", "truncated"),
        ("inspect", "missing"),
        ("inspect", "other-folder"),
        ("inspect", "unknown-step"),
        ("verify", "missing"),
        ("verify", "truncated"),
        ("verify", "unknown-step"),
        ("to-orbax", "code"),
        ("to-orbax", "text"),
        ("to-pt", "missing-dir"),
        ("to-pt", "truncated"),
        ("to-pt", "other-folder"),
        ("to-pt", "unknown-step"),
    ],
)
def test_bad_input_gives_one_line_error_and_writes_nothing(
    tmp_path, run_dir, command, kind, capsys
):
    """In this process (``bridge.__main__.main``, the command line's own entry point); the
    test below checks the exit status of the real command line once."""
    from bridge.__main__ import main

    bad = _bad_input(kind, tmp_path, run_dir)
    output = tmp_path / "out" / ("models" if command == "to-orbax" else "out.pt")
    args = [command, bad] + ([output] if command in ("to-orbax", "to-pt") else [])
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, f"{out}\n{err}"
    message = err.strip()
    assert message.startswith("error: ") and "\n" not in message, err
    assert "Traceback" not in err
    assert bad in message or Path(bad).name in message, message
    assert not output.exists()
    assert not (tmp_path / "pwned").exists()  # the pickled code did not run
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing else written


def test_a_bad_input_exits_2_from_the_command_line(tmp_path, run_dir):
    bad = _bad_input("code", tmp_path, run_dir)
    result = run_cli("to-orbax", bad, tmp_path / "out" / "models")
    assert result.returncode == 2, f"{result.stdout}\n{result.stderr}"
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, result.stderr
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "out").exists()
