"""The ``marl-jax`` console script: one command over the package's command lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from marl_jax import __version__
from marl_jax.console import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_with_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, help_) in COMMANDS.items():
        assert sum(line.split()[:1] == [name] for line in out.splitlines()) == 1
        assert f"{name}  " in out and help_ in out
    assert main([]) == 0 and capsys.readouterr().out == out


def test_each_command_runs_its_module(capsys):
    """Every subcommand reaches its own parser (--help exits 0 with its usage)."""
    for name, (module, _) in COMMANDS.items():
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        prog = module.removesuffix(".__main__")
        assert f"python -m {prog}" in capsys.readouterr().out, name


def test_a_command_gets_its_arguments_and_exit_code(tmp_path, capsys):
    assert main(["config", "schema"]) == 0
    assert '"title": "Config"' in capsys.readouterr().out
    code = main(["plant", str(tmp_path / "none.csv"), str(tmp_path / "out.csv"), "--signal",
                 "trend", "--strength", "0.1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "none.csv" in err and err.count("\n") == 1


def test_unknown_command_and_version(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and err.count("\n") == 1
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"marl-jax {__version__}"


def test_the_script_is_declared_and_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["marl-jax"] == "marl_jax.console:main"
    script = shutil.which("marl-jax", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("marl-jax is not installed in this environment: pip install -e . again")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "walkforward" in done.stdout
