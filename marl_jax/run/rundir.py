"""The layout of a run directory, and the lock that makes one process its owner."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
from pathlib import Path

from marl_jax.errors import MarlJaxError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
REPORT = "report.json"
LEARNING_CURVE = "learning_curve.png"
EQUITY_CURVE = "equity_curve.png"
EXPORT_PT = "strategic_marl.pt"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
# A run trained with ensemble K > 1: its members' run directories, and the file listing them.
ENSEMBLE = "ensemble.json"
MEMBER_DIR = "member_{}"


class RunError(MarlJaxError, RuntimeError):
    """A run that cannot start or continue; the message is one line."""


def ensemble_members(root: Path) -> list[Path] | None:
    """The member run directories of the ensemble run ``root`` (its ``ensemble.json``), or
    None when ``root`` is not one."""
    path = Path(root) / ENSEMBLE
    if not path.is_file():
        return None
    try:
        size = int(json.loads(path.read_text())["size"])
    except (ValueError, KeyError, TypeError):
        raise RunError(f"{path}: not readable; train the ensemble again in another --out") from None
    return [Path(root) / MEMBER_DIR.format(i) for i in range(size)]


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths of one run. ``checkpoint_dir`` is the config's ``checkpoint.dir``, taken relative
    to the run directory unless absolute."""

    root: Path
    checkpoint_dir: str = "checkpoints"

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.root / self.checkpoint_dir

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def learning_curve(self) -> Path:
        return self.root / LEARNING_CURVE

    @property
    def equity_curve(self) -> Path:
        return self.root / EQUITY_CURVE

    @property
    def export_pt(self) -> Path:
        return self.root / EXPORT_PT

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    def holds_a_run(self) -> bool:
        """Whether a run was started here (its config or any checkpoint exists)."""
        ckpts = self.checkpoints
        return self.config.is_file() or (ckpts.is_dir() and any(ckpts.iterdir()))


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` holding the owner's process id.

    The kernel drops the lock when its process dies (SIGKILL included), so a killed run can
    be resumed at once. A second process gets a one-line :class:`RunError` naming the first.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.path = Path(root) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            owner = self.path.read_text().strip() or "unknown"
            raise RunError(
                f"{self.path.parent} is in use by another process (pid {owner}); wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
