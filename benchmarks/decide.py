"""Latency of one decision on the latest bar of a year of hourly bars, features included.

A synthetic year of hourly bars (``--bars``, 8760) is written to a temporary CSV and read
back. For the quickstart and the full-size models (``configs/quickstart.yaml``,
``configs/strategic_marl_v1.yaml``; PyTorch's initialisation, converted), it times
:meth:`marl_jax.policy.Policy.decide` on the last bar: the 13 features of only the bars the
window needs (warm-up + window), the normalisation, then the three actors and the critic in
one jitted call. Beside it, from the same invocation, the original PyTorch models
(``bridge.torch_reference``) in eager mode under ``torch.no_grad()`` on the same features
(the same NumPy feature code, then the four models). p50 and p99 of ``--repeats`` timed
decisions after 5 warm-up ones, with the features-only time for reference; PyTorch first,
then JAX. Then each model alone at batch 1 (where the time goes).

    python benchmarks/decide.py --repeats 300
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch

from bridge import torch_reference
from bridge.convert import torch_to_flax
from marl_jax.agents import MODEL_NAMES
from marl_jax.config import load_config
from marl_jax.env import data, market
from marl_jax.env.features import AGENT_FEATURES
from marl_jax.models.registry import module_config
from marl_jax.models.team import build_modules
from marl_jax.policy import Policy

CONFIGS = {"quickstart": "configs/quickstart.yaml", "full-size": "configs/strategic_marl_v1.yaml"}


def percentiles(fn, repeats: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def build(config_path: str, bars: data.Bars) -> tuple[Policy, dict]:
    """A Policy and the PyTorch reference models with the same (PyTorch-initialised) weights."""
    cfg = load_config(config_path)
    modules = build_modules(cfg)
    refs, variables = {}, {}
    for name, module in modules.items():
        cls = getattr(torch_reference, type(module).__name__)
        refs[name] = cls(**module_config(module)).eval()
        variables[name] = torch_to_flax(refs[name].state_dict(), module)
    norm = market.fit_normalisation(bars)
    variables = jax.tree.map(jax.numpy.asarray, variables)
    policy = Policy(modules, variables, norm, cfg.env.window, config_path, cfg)
    return policy, refs


def torch_decide(policy: Policy, refs: dict, bars: data.Bars):
    """The same decision with PyTorch's models: the same tail features, then eager models."""
    tail = bars[len(bars) - policy.history :]
    window = policy.normalised_features(tail)[-policy.window :]
    x = torch.from_numpy(np.ascontiguousarray(window.T[None]))
    with torch.no_grad():
        actions = [
            refs[name](x[:, a:b], deterministic=True)["action"]
            for name, (a, b) in AGENT_FEATURES.items()
        ]
        value = refs["critic"](x.mean(-1))["value"]
    return torch.stack(actions, -1), value


def table_row(size: str, bars: data.Bars, repeats: int) -> str:
    """One size's row: features, PyTorch and JAX latencies, and whether the actions agree."""
    policy, refs = build(CONFIGS[size], bars)
    tail = bars[len(bars) - policy.history :]
    feat50, _ = percentiles(lambda: policy.normalised_features(tail), repeats)
    t50, t99 = percentiles(lambda: torch_decide(policy, refs, bars), repeats)
    j50, j99 = percentiles(lambda: policy.decide(bars), repeats)
    actions_t, _ = torch_decide(policy, refs, bars)
    same = np.array_equal(policy.decide(bars).actions[0], actions_t.numpy()[0])
    return (
        f"| {size} | {feat50:.2f} | {t50:.2f} | {t99:.2f} | {j50:.2f} | {j99:.2f} | "
        f"{t50 / j50:.2f}x | {'yes' if same else 'NO'} |"
    )


def breakdown_row(size: str, bars: data.Bars, repeats: int) -> str:
    """Each model alone at batch 1 on the latest window (jitted, its variables as
    arguments), PyTorch eager beside it: where the decision's time goes."""
    policy, refs = build(CONFIGS[size], bars)
    tail = bars[len(bars) - policy.history :]
    window = policy.normalised_features(tail)[-policy.window :].astype(np.float32)
    x = np.ascontiguousarray(window.T[None])
    inputs = {name: x[:, a:b] for name, (a, b) in AGENT_FEATURES.items()}
    inputs["critic"] = x.mean(-1)
    cells = []
    for name in MODEL_NAMES:
        module = policy.modules[name]
        kwargs = {} if name == "critic" else {"deterministic": True}
        flax_kwargs = kwargs | ({} if name == "critic" else {"attention_weights": False})
        fn = jax.jit(lambda v, x, m=module, kw=flax_kwargs: m.apply(v, x, **kw))
        j50, _ = percentiles(
            lambda f=fn, n=name: jax.block_until_ready(f(policy.variables[n], inputs[n])),
            repeats,
        )
        tx = torch.from_numpy(inputs[name])
        with torch.no_grad():
            t50, _ = percentiles(lambda r=refs[name], t=tx, kw=kwargs: r(t, **kw), repeats)
        cells.append(f"{t50:.2f} / {j50:.2f}")
    return f"| {size} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=8760, help="hourly bars in the file")
    ap.add_argument("--repeats", type=int, default=300, help="timed decisions per model")
    ap.add_argument("--models", default="quickstart,full-size", help="comma-separated sizes")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "year.csv"
        data.synthetic_bars(args.bars, seed=0, interval_minutes=60).to_frame().to_csv(
            path, index=False
        )
        bars = data.load_bars(path)
    print(
        f"Decision on the latest of {len(bars)} hourly bars, features included: JAX "
        f"{jax.__version__} (jitted) vs PyTorch {torch.__version__} eager "
        f"({torch.get_num_threads()} threads); p50/p99 of {args.repeats} decisions, ms"
    )
    print(
        "| models | features ms (p50) | PyTorch p50 | PyTorch p99 | JAX p50 | JAX p99 | "
        "JAX speed-up (p50) | actions equal |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.models.split(","):
        print(table_row(size, bars, args.repeats))
    print("\nEach model alone at batch 1, p50 ms, PyTorch eager / JAX jitted:")
    print("| models | " + " | ".join(MODEL_NAMES) + " |")
    print("|---" * (len(MODEL_NAMES) + 1) + "|")
    for size in args.models.split(","):
        print(breakdown_row(size, bars, args.repeats))


if __name__ == "__main__":
    main()
