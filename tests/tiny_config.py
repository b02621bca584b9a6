"""The tiny configuration that the trainer and run tests share (so compiled programs are too)."""

from __future__ import annotations

import copy
from typing import Any

TINY: dict[str, Any] = {
    "agents": {
        name: {"hidden_dims": [8, 8, 8], "conv_channels": [4, 4, 4]}
        for name in ("mlmi", "nwrqk", "mmd")
    },
    "critic": {"hidden_dims": [16, 8, 8]},
    "training": {
        "num_envs": 4,
        "rollout_len": 8,
        "total_timesteps": 64,
        "update_epochs": 2,
        "num_minibatches": 2,
        "unroll_learn": False,  # compiles faster; test_mappo checks the unrolled loop
    },
    "env": {"window": 8, "episode_len": 16, "synthetic_n_bars": 1500},
    "checkpoint": {"save_every": 2},
}


def tiny(**sections: dict[str, Any]) -> dict[str, Any]:
    """A copy of :data:`TINY` with the given sections' keys updated, e.g.
    ``tiny(training={"total_timesteps": 256})``."""
    data = copy.deepcopy(TINY)
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return data
