"""MAPPO training throughput: environment steps per second of the jitted update loop.

Times ``--updates`` updates after a compiled warm-up chunk of the same size (so compile time
is reported separately), for a config and optional ``--set`` overrides.

    python benchmarks/train.py --config configs/quickstart.yaml --updates 10
    python benchmarks/train.py --config configs/strategic_marl_v1.yaml --set training.num_envs=256

``--vs-torch`` compares one marl-jax update with one update of the plain PyTorch MAPPO of
``benchmarks/train_torch.py`` (same models and initial weights, same environment logic in
NumPy, same rollout length, epochs, minibatches and losses), in this process, one after the
other: first PyTorch (one warm-up update, then ``--updates`` timed), then JAX (``algo.update``
compiled ahead of time and timed separately, one warm-up update, then ``--updates`` timed).
PyTorch goes first because on a CPU XLA's worker threads keep spinning for a while after JAX
work and would slow PyTorch's threads (see ``benchmarks/models.py``). The ratio is PyTorch
time / JAX time: above 1, marl-jax is faster.

    python benchmarks/train.py --config configs/quickstart.yaml --vs-torch
    python benchmarks/train.py --config configs/strategic_marl_v1.yaml --set training.num_envs=16 \\
        --set training.rollout_len=8 --set training.update_epochs=2 \\
        --set training.num_minibatches=2 --vs-torch
"""

from __future__ import annotations

import argparse
import time

import jax

from marl_jax.config import load_config
from marl_jax.env import market
from marl_jax.mappo import MAPPO
from marl_jax.run.setup import env_params_for, load_market

# Dense peak FLOP/s of the GPUs this project is measured on (NVIDIA's datasheets, SXM parts):
# plain float32, TF32 tensor cores, bfloat16 tensor cores.
PEAK_FLOPS = {
    "H100": {"highest": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},
    "H200": {"highest": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},
}


def peak_flops(precision: str, compute_dtype: str) -> tuple[str, float] | None:
    """The device's dense peak for the work's precision, or None when it is not tabled."""
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_FLOPS.items():
        if name in kind:
            key = "bfloat16" if compute_dtype == "bfloat16" else precision
            return f"{name} {key}", peaks[key]
    return None


def update_flops(cfg, algo, state, params) -> int:
    """Model FLOPs of one update (matrix work of the rollout and of every minibatch's
    gradient), counted on the scan recurrences: cuDNN's kernels are opaque to the count,
    and the work is the same."""
    from marl_jax.flops import count_flops
    from marl_jax.mappo import MAPPO

    counting = algo
    if cfg.training.rnn_backend != "scan":
        scan_cfg = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"rnn_backend": "scan"})}
        )
        counting = MAPPO(scan_cfg, market.MARKET)
    return count_flops(counting.update, state, params)


def vs_torch(args, cfg, params) -> None:
    """Time ``args.updates`` PyTorch updates, then as many JAX updates; print the table."""
    import torch
    import train_torch

    device = args.torch_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # the same arithmetic as JAX at this precision
        tf32 = args.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    algo, state = train_torch.jax_initial_state(cfg, params)
    trainer = train_torch.TorchMAPPO(
        cfg, params, train_torch.torch_state_dicts(algo, state), device=device
    )
    n = args.updates

    start = time.perf_counter()
    trainer.update()
    torch_warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        torch_metrics = trainer.update()  # float() of its metrics waits for the device
    torch_s = (time.perf_counter() - start) / n
    del trainer
    if device == "cuda":
        torch.cuda.empty_cache()

    start = time.perf_counter()
    update = jax.jit(algo.update).lower(state, params).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, _ = update(state, params)
    jax.block_until_ready(state)
    jax_warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        state, jax_metrics = update(state, params)
    jax.block_until_ready(state)
    jax_s = (time.perf_counter() - start) / n

    t = cfg.training
    steps = t.num_envs * t.rollout_len
    name = " ".join([args.config, *(f"--set {s}" for s in args.set)])
    jax_device = jax.devices()[0]
    threads = f" with {torch.get_num_threads()} threads" if device == "cpu" else ""
    print(
        f"{name}\nJAX {jax.__version__} on {jax_device.platform} ({jax_device.device_kind}), "
        f"rnn_backend {algo.modules['nwrqk'].rnn_backend}, compute_dtype {t.compute_dtype}, "
        f"precision {args.precision}; PyTorch {torch.__version__} on {device}"
        f"{threads}; "
        f"{t.num_envs} envs x {t.rollout_len} steps, {t.update_epochs} epochs x "
        f"{t.num_minibatches} minibatches; {n} timed updates each after one warm-up update"
    )
    print(
        f"warm-up update: PyTorch {torch_warm:.2f} s; JAX compile {compile_s:.1f} s "
        f"(ahead of time), then {jax_warm:.2f} s; last update's loss: PyTorch "
        f"{torch_metrics['loss']:.4g}, JAX {float(jax_metrics['loss']):.4g}"
    )
    mfu = ""
    if args.mfu:
        flops = update_flops(cfg, algo, state, params)
        peak = peak_flops(args.precision, t.compute_dtype)
        achieved = flops / jax_s
        mfu = f"{flops / 1e12:.2f} TFLOP/update, {achieved / 1e12:.1f} TFLOP/s"
        if peak is not None:
            mfu += f", MFU {achieved / peak[1]:.2%} of {peak[0]} {peak[1] / 1e12:.0f}"
    print(
        "| config | JAX ms/update | PyTorch ms/update | ratio (PyTorch / JAX) "
        "| JAX env steps/s | PyTorch env steps/s | JAX compile s |"
        + (" model FLOPs |" if mfu else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if mfu else ""))
    print(
        f"| {args.config.rsplit('/', 1)[-1]}: {t.num_envs} x {t.rollout_len}, "
        f"{t.update_epochs} x {t.num_minibatches} | {jax_s * 1e3:.0f} | {torch_s * 1e3:.0f} "
        f"| {torch_s / jax_s:.2f}x | {steps / jax_s:,.0f} | {steps / torch_s:,.0f} "
        f"| {compile_s:.1f} |" + (f" {mfu} |" if mfu else ""),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument(
        "--updates", type=int, default=None, help="timed updates (default 10; 5 with --vs-torch)"
    )
    ap.add_argument(
        "--vs-torch",
        action="store_true",
        help="compare with the plain PyTorch MAPPO of benchmarks/train_torch.py",
    )
    ap.add_argument(
        "--torch-device", default="auto", help="cpu, cuda, or auto (cuda when PyTorch has one)"
    )
    ap.add_argument(
        "--precision",
        choices=("highest", "tf32"),
        default="highest",
        help="float32 matmuls on a GPU: full float32 on both sides (default), or TF32 on both",
    )
    ap.add_argument(
        "--num-envs",
        default=None,
        help="with --vs-torch: a comma-separated list of num_envs to compare one after another",
    )
    ap.add_argument("--mfu", action="store_true", help="with --vs-torch: model FLOPs and MFU")
    args = ap.parse_args()
    if args.updates is None:
        args.updates = 5 if args.vs_torch else 10
    jax.config.update(
        "jax_default_matmul_precision",
        "highest" if args.precision == "highest" else "tensorfloat32",
    )
    cfg = load_config(args.config, args.set)
    bars = load_market(cfg)
    if args.vs_torch:
        sizes = [int(v) for v in args.num_envs.split(",")] if args.num_envs else [None]
        for size in sizes:
            run_cfg = (
                cfg
                if size is None
                else load_config(args.config, [*args.set, f"training.num_envs={size}"])
            )
            vs_torch(args, run_cfg, env_params_for(run_cfg, bars, "train", None))
        return
    params = env_params_for(cfg, bars, "train", None)
    algo = MAPPO(cfg, market.MARKET)
    state = jax.jit(algo.init)(jax.random.key(0), params)
    run = jax.jit(algo.run, static_argnums=2)
    start = time.perf_counter()
    state, _ = run(state, params, args.updates)
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = run(state, params, args.updates)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    t = cfg.training
    steps = args.updates * t.num_envs * t.rollout_len
    print(
        f"{args.config} {' '.join(args.set)} on {jax.devices()[0].platform}: "
        f"{t.num_envs} envs x {t.rollout_len} steps, {t.update_epochs} epochs x "
        f"{t.num_minibatches} minibatches; compile+first chunk {first:.1f} s; "
        f"{args.updates} updates in {elapsed:.2f} s = {steps / elapsed:,.0f} env steps/s "
        f"({elapsed / args.updates * 1e3:.0f} ms/update)"
    )


if __name__ == "__main__":
    main()
