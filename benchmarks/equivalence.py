"""Reproduce the upstream reference outputs on the current JAX device (CPU or GPU).

Loads the reference checkpoint through the bridge, runs the Flax models on the reference
inputs and prints the max abs difference of every output, with JAX's matmul precision at
``highest`` (TF32 off) and, with ``--also-default``, at the device default (TF32 on a GPU).

    python benchmarks/equivalence.py ../shared/fixtures/upstream_reference
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from bridge.convert import load_pt_checkpoint

OUTPUTS = ("action_probs", "logits", "value", "log_prob", "entropy", "attention_weights")


def compare(ckpt, ref: dict, precision: str) -> list[tuple[str, str, float]]:
    rows = []
    with jax.default_matmul_precision(precision):
        for name in ("mlmi", "nwrqk", "mmd"):
            module = ckpt.modules[name]
            apply = jax.jit(lambda v, x, m=module: m.apply(v, x, deterministic=True))
            out = apply(ckpt.agents[name], ref[f"{name}/input"])
            for key in OUTPUTS:
                diff = np.abs(np.asarray(out[key], np.float64) - ref[f"{name}/{key}"]).max()
                rows.append((name, key, float(diff)))
            mismatched = int((np.asarray(out["action"]) != ref[f"{name}/action"]).sum())
            rows.append((name, "action mismatches", float(mismatched)))
        names = dict.fromkeys(("mlmi", "nwrqk", "mmd"))
        out = jax.jit(lambda v, x: ckpt.modules["critic"].apply(v, x, agent_states=names))(
            ckpt.critic, ref["critic/input"]
        )
        rows.append(("critic", "value", float(np.abs(out["value"] - ref["critic/value"]).max())))
        for agent, value in out["agent_values"].items():
            diff = float(np.abs(value - ref[f"critic/agent_values/{agent}"]).max())
            rows.append(("critic", f"agent_values/{agent}", diff))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference_dir", type=Path)
    ap.add_argument("--also-default", action="store_true")
    args = ap.parse_args()
    ckpt = load_pt_checkpoint(args.reference_dir / "strategic_marl_reference.pt")
    with np.load(args.reference_dir / "reference_io.npz") as data:
        ref = {k: data[k] for k in data.files}
    precisions = ["highest", "default"] if args.also_default else ["highest"]
    results = {p: compare(ckpt, ref, p) for p in precisions}
    print(f"device: {jax.devices()[0]} (JAX {jax.__version__})")
    print(f"{'model':7s} {'output':22s}" + "".join(f"{p:>14s}" for p in precisions))
    for i, (model, output, _) in enumerate(results["highest"]):
        cells = "".join(f"{results[p][i][2]:14.3e}" for p in precisions)
        print(f"{model:7s} {output:22s}{cells}")


if __name__ == "__main__":
    main()
