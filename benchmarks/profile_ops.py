"""Which ops one minibatch gradient spends its time on: a jax.profiler trace read per HLO op.

Jits the trainer's per-minibatch gradient (``jax.grad(MAPPO.loss, has_aux=True)``, as
``MAPPO.learn``'s ``minibatch_step`` takes it) on ``--minibatch`` rows of a real rollout,
compiles it ahead of time, times it (median of ``--repeats`` calls after 2 warm-up calls),
runs ``--repeats`` more calls under ``jax.profiler.trace(OUT/trace)``, and times it again.

What the trace holds (JAX 0.10.2, CPU): ``jax.profiler.trace`` writes
``OUT/trace/plugins/profile/<session>/<host>.xplane.pb`` and ``<host>.trace.json.gz``. The
gzip JSON is a Chrome trace, read here directly (no profiler plugin needed): the XLA CPU
runtime records one complete event (``"ph": "X"``) per executed thunk, with
``args.hlo_module`` (here ``jit_minibatch_grad``), ``args.hlo_op`` (the instruction's name in
the optimized HLO) and ``args.run_id`` (one per call), on its worker threads. An op's *own*
time is its event's duration less the hlo-op events nested in it on the same thread. Thunks
run concurrently on several threads, so the own times add up to more than the wall clock;
each op's *wall share* splits every instant evenly among the ops running then, and the
shares add up to the busy time. A ``while`` thunk's event ends before its iterations run (they
continue as callbacks), so a loop's time is summed from the ops of its body in the HLO.
Convolutions (Eigen) are dispatched asynchronously and their events cover only the dispatch
(negligible here: about 1 GFLOP of convolutions per call). Per-op figures are the medians
over the traced calls.

The op names are mapped onto the optimized HLO (``compiled.as_text()``, saved as
``OUT/grad.hlo.txt``): opcode, fusion kind and the ops fused into it give the category; the
``op_name`` metadata (``jvp(NWRQKActor)/temporal/rnn/while/body/...``) gives the Flax model and
module path, ``transpose(jvp(...))`` marking the backward pass; the module's ``StackFrames``
give the innermost source line. Ops without metadata (copies and zero fills XLA adds) take
it from their nearest users (a copy feeds the tuple that feeds a while), "shared" when those
belong to several models. Dots and convolutions get their FLOPs from the shapes.

``--xla-dump`` also writes XLA's own dumps of the gradient module
(``XLA_FLAGS=--xla_dump_to=OUT/hlo --xla_dump_hlo_as_text``, set before JAX starts, limited to
this module by ``--xla_dump_hlo_module_re``): the HLO before and after optimization, buffer
assignment, and the LLVM IR of the fused kernels. ``--reread`` prints the tables again from
OUT's saved HLO, newest trace and timings without running anything.

    python benchmarks/profile_ops.py --config configs/quickstart.yaml --minibatch 512
    python benchmarks/profile_ops.py --config configs/strategic_marl_v1.yaml --minibatch 64

Tables (markdown), in ms per gradient call: totals; by category; by model and pass; by model,
pass and in/out of the scans' loop bodies; by category inside the forward and the backward
scans; model x category; the while loops; dots and convolutions by source line and shape
(GFLOP/s from own time); the ``--top`` costliest ops. "count" is thunk executions per call.
``OUT/ops.json`` holds every op's row.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time

MODULE_FN = "minibatch_grad"

# ------------------------------------------------------------------ HLO text


class Instr:
    """One HLO instruction of the optimized module."""

    __slots__ = (
        "name",
        "computation",
        "opcode",
        "shape",
        "is_root",
        "line",
        "calls",
        "fusion_kind",
        "backend_kind",
        "op_name",
        "frame",
        "target",
        "trip_count",
        "body",
        "condition",
        "operands",
    )

    def __init__(self, name: str, computation: str, line: str, is_root: bool):
        self.name = name
        self.computation = computation
        self.line = line
        self.is_root = is_root
        self.calls: list[str] = []
        self.fusion_kind = self.backend_kind = self.op_name = self.target = None
        self.frame = self.trip_count = None
        self.body = self.condition = None
        self.operands: list[str] = []


_INSTR = re.compile(r"^\s+(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def _split_shape(rest: str) -> tuple[str, str]:
    """``(shape, remainder)`` of ``f32[8,32]{1,0} dot(...)`` or ``(s32[], ...) while(...)``."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def parse_hlo(text: str):
    """Instructions by name, computations' instruction lists, the entry name, source frames."""
    instrs: dict[str, Instr] = {}
    comps: dict[str, list[Instr]] = {}
    entry = None
    comp = None
    section = None
    files, funcs, locs, frames = {}, {}, {}, {}
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if section and line and line[0].isdigit():
            key, _, val = line.partition(" ")
            if section == "FileNames":
                files[int(key)] = val.strip('"')
            elif section == "FunctionNames":
                funcs[int(key)] = val.strip('"')
            else:
                fields = dict(re.findall(r"(\w+)=(\d+)", val))
                (locs if section == "FileLocations" else frames)[int(key)] = {
                    k: int(v) for k, v in fields.items()
                }
            continue
        section = None
        m = _COMP.match(line)
        if m and not line.startswith(" "):
            comp = m.group(2)
            comps[comp] = []
            if m.group(1):
                entry = comp
            continue
        m = _INSTR.match(line)
        if not m or comp is None:
            continue
        ins = Instr(m.group(2), comp, line, bool(m.group(1)))
        ins.shape, tail = _split_shape(m.group(3))
        om = re.match(r"([\w\-]+)\(", tail)
        ins.opcode = om.group(1) if om else tail.split("(")[0]
        args, _ = _split_shape(tail[len(ins.opcode) :])
        ins.operands = re.findall(r"%([\w.\-]+)", args)
        ins.calls = re.findall(r"calls=%([\w.\-]+)", line)
        if ins.opcode == "while":
            ins.body = re.search(r"body=%([\w.\-]+)", line).group(1)
            ins.condition = re.search(r"condition=%([\w.\-]+)", line).group(1)
            ins.calls += [ins.body, ins.condition]
            tc = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            ins.trip_count = int(tc.group(1)) if tc else None
        bm = re.search(r"branch_computations=\{([^}]*)\}", line)
        if bm:
            ins.calls += re.findall(r"%([\w.\-]+)", bm.group(1))
        for attr, pattern in (
            ("fusion_kind", r"kind=(k\w+)"),
            ("backend_kind", r'"fusion_config":\{"kind":"([^"]+)"'),
            ("op_name", r'op_name="([^"]*)"'),
            ("target", r'custom_call_target="([^"]*)"'),
        ):
            am = re.search(pattern, line)
            if am:
                setattr(ins, attr, am.group(1))
        fm = re.search(r"metadata=\{[^}]*stack_frame_id=(\d+)", line)
        if fm:
            ins.frame = int(fm.group(1))
        else:
            sm = re.search(r'source_file="([^"]*)" source_line=(\d+)', line)
            if sm:
                ins.frame = (os.path.basename(sm.group(1)), int(sm.group(2)))
        instrs[ins.name] = ins
        comps[comp].append(ins)
    return instrs, comps, entry, (files, funcs, locs, frames)


def source_of(frame, tables) -> str:
    """``file.py:line function`` of an instruction's innermost source frame."""
    if frame is None:
        return ""
    if isinstance(frame, tuple):
        return f"{frame[0]}:{frame[1]}"
    files, funcs, locs, frames = tables
    loc = locs.get(frames.get(frame, {}).get("file_location_id"))
    if not loc:
        return ""
    path = os.path.basename(files.get(loc.get("file_name_id"), "?"))
    return f"{path}:{loc.get('line')} {funcs.get(loc.get('function_name_id'), '')}"


# ------------------------------------------------------------------ categories

MOVEMENT = {
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "bitcast",
    "reshape",
    "copy",
    "transpose",
    "broadcast",
    "slice",
    "concatenate",
    "pad",
    "reverse",
    "iota",
    "dynamic-slice",
    "dynamic-update-slice",
}


def fused_opcodes(ins: Instr, comps) -> collections.Counter:
    """Opcodes inside a fusion (nested fusions included)."""
    counts = collections.Counter()
    stack = list(ins.calls)
    while stack:
        for sub in comps.get(stack.pop(), []):
            counts[sub.opcode] += 1
            stack.extend(sub.calls)
    return counts


def fusion_roots(ins: Instr, comps) -> set[str]:
    """Opcodes at the root of a fusion (through tuples and bitcasts)."""
    roots = set()
    for comp in ins.calls:
        body = {i.name: i for i in comps.get(comp, [])}
        todo = [i for i in body.values() if i.is_root]
        while todo:
            r = todo.pop()
            if r.opcode in ("tuple", "bitcast", "reshape"):
                ops = re.findall(r"%([\w.\-]+)", r.line.split("=", 1)[1])
                todo.extend(body[o] for o in ops if o in body)
            else:
                roots.add(r.opcode)
    return roots


def is_constant_fill(ins: Instr | None, instrs, comps) -> bool:
    """A broadcast of constants (``jnp.zeros`` and the like), plain or wrapped in a fusion."""
    if ins is None:
        return False
    if ins.opcode == "constant":
        return True
    if ins.opcode == "broadcast" or (
        ins.opcode == "fusion"
        and set(fused_opcodes(ins, comps)) <= {"parameter", "constant", "broadcast", "bitcast"}
    ):
        return all(is_constant_fill(instrs.get(o), instrs, comps) for o in ins.operands)
    return False


def dims(shape: str) -> list[int]:
    m = re.match(r"\w+\[([\d,]*)\]", shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def flops(ins: Instr | None, instrs, comps) -> float:
    """Multiply-add FLOPs (2 per MAC) of a dot or convolution, or of those fused into ``ins``."""
    if ins is None:
        return 0.0
    if ins.opcode == "dot":
        lhs = dims(instrs[ins.operands[0]].shape)
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.line)
        k = math.prod(lhs[int(i)] for i in m.group(1).split(",") if i) if m else 1
        return 2.0 * math.prod(dims(ins.shape)) * k
    if ins.opcode == "convolution":
        rhs = dims(instrs[ins.operands[1]].shape)
        m = re.search(r"dim_labels=\w*_(\w+)->", ins.line)
        out_feat = rhs[m.group(1).index("o")] if m else 1
        return 2.0 * math.prod(dims(ins.shape)) * math.prod(rhs) / max(out_feat, 1)
    total = 0.0
    for comp in ins.calls if ins.opcode == "fusion" else []:
        total += sum(flops(sub, instrs, comps) for sub in comps.get(comp, []))
    return total


def categorize(ins: Instr | None, comps, instrs) -> str:
    if ins is None:
        return "unmapped thunk"
    op = ins.opcode
    plain_copy = op == "copy" or (
        op == "fusion" and set(fused_opcodes(ins, comps)) <= {"parameter", "copy", "bitcast"}
    )
    if plain_copy and all(is_constant_fill(instrs.get(o), instrs, comps) for o in ins.operands):
        return "copy of a zero fill (scan buffer init)"
    if op in ("broadcast", "fusion") and is_constant_fill(ins, instrs, comps):
        return "broadcast of a constant (zero fill)"
    if op == "while":
        return "while loop (own time)"
    if op in ("conditional", "call"):
        return "conditional/call (own time)"
    if op in ("dot", "convolution"):
        return "dot (matmul)" if op == "dot" else "convolution"
    if op == "custom-call":
        return f"custom-call {ins.target}"
    if op in ("gather", "scatter"):
        return "gather/scatter"
    if op in ("reduce", "reduce-window"):
        return "reduce"
    if op in ("copy", "transpose"):
        return "transpose/copy (layout)"
    if op == "dynamic-update-slice":
        return "dynamic-update-slice"
    if op == "dynamic-slice":
        return "dynamic-slice"
    if op in MOVEMENT:
        return "concat/slice/pad/broadcast"
    if op != "fusion":
        return op
    inner = fused_opcodes(ins, comps)
    roots = fusion_roots(ins, comps)
    if "dot" in inner:
        return "dot (matmul)"
    if "convolution" in inner:
        return "convolution"
    if inner.keys() & {"gather", "scatter"}:
        return "gather/scatter"
    if "dynamic-update-slice" in roots:
        return "dynamic-update-slice"
    if roots & {"reduce", "reduce-window"} or ins.fusion_kind == "kInput":
        return "reduce"
    if set(inner) <= MOVEMENT:
        if inner.keys() & {"transpose", "copy"}:
            return "transpose/copy (layout)"
        if "dynamic-slice" in inner:
            return "dynamic-slice"
        return "concat/slice/pad/broadcast"
    return "elementwise fusion"


def describe(ins: Instr, comps) -> str:
    """A short description of a fusion's contents: ``kLoop: multiply x4, add x2, tanh``."""
    if ins.opcode != "fusion":
        return ins.opcode + (f" {ins.target}" if ins.target else "")
    inner = fused_opcodes(ins, comps)
    skip = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
    parts = [f"{op} x{n}" if n > 1 else op for op, n in inner.most_common() if op not in skip][:5]
    kind = ins.backend_kind or ins.fusion_kind or ""
    return f"{kind.strip('_')}: {', '.join(parts)}"


# ------------------------------------------------------------------ trace


def read_trace(trace_dir: str, module: str):
    """hlo-op events of ``module`` from the newest ``*.trace.json.gz`` under ``trace_dir``:
    ``[(run_id, tid, ts, dur, op)]`` (microseconds), and the file read."""
    paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    if not paths:
        raise SystemExit(f"no *.trace.json.gz under {trace_dir}/plugins/profile")
    path = max(paths, key=os.path.getmtime)
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = []
    for e in trace.get("traceEvents", []):
        args = e.get("args") or {}
        if e.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
            events.append(
                (args.get("run_id"), e["tid"], e["ts"], e.get("dur", 0.0), args["hlo_op"])
            )
    return events, path


def own_times(events):
    """Per event: ``(run_id, op, own_us, dur_us)``; own = duration less nested hlo-op events
    on the same thread."""
    by_tid = collections.defaultdict(list)
    for ev in events:
        by_tid[ev[1]].append(ev)
    out = []
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e[2], -e[3]))
        stack: list[list] = []  # [end, index in out]
        for run, _, ts, dur, op in evs:
            while stack and stack[-1][0] <= ts + 1e-3:
                stack.pop()
            if stack:
                out[stack[-1][1]][2] -= dur
            out.append([run, op, dur, dur])
            stack.append([ts + dur, len(out) - 1])
    return out


def wall_shares(events, skip):
    """Per ``(run_id, op)``: its share of the wall clock, in us. The thunks of one call run on
    several threads at once; each instant is split evenly among the ops running then (``skip``:
    ops left out, the while loops, whose events enclose their body's). Also, per run, the time
    during which at least one op ran."""
    by_run = collections.defaultdict(list)
    for run, _tid, ts, dur, op in events:
        if op not in skip:
            by_run[run] += [(ts, 1, op), (ts + dur, -1, op)]
    shares = collections.defaultdict(float)
    busy = {}
    for run, edges in by_run.items():
        edges.sort(key=lambda e: (e[0], e[1]))
        active: collections.Counter = collections.Counter()
        last, busy_us = edges[0][0], 0.0
        for t, kind, op in edges:
            n = sum(active.values())
            if n and t > last:
                for a, k in active.items():
                    shares[(run, a)] += (t - last) * k / n
                busy_us += t - last
            last = t
            active[op] += kind
            if active[op] <= 0:
                del active[op]
        busy[run] = busy_us
    return shares, busy


# ------------------------------------------------------------------ report


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--minibatch", type=int, help="rows (default: the config's minibatch size)")
    ap.add_argument(
        "--out",
        default=os.path.join(tempfile.gettempdir(), "marl_jax_profile_ops"),
        help="folder for the trace, the HLO and ops.json",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed calls, then traced calls")
    ap.add_argument("--top", type=int, default=15, help="individual ops to list")
    ap.add_argument("--xla-dump", action="store_true", help="also XLA's dumps, in OUT/hlo")
    ap.add_argument("--reread", action="store_true", help="only re-read OUT's HLO and newest trace")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if args.xla_dump:  # read when the CPU backend starts: before JAX runs anything
        os.environ["XLA_FLAGS"] = (
            f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={out}/hlo --xla_dump_hlo_as_text"
            f" --xla_dump_hlo_module_re=.*{MODULE_FN}.*"
        ).strip()

    import jax

    from marl_jax.config import load_config
    from marl_jax.mappo import MAPPO, Batch
    from marl_jax.run.setup import env_params_for, load_market

    cfg = load_config(args.config, args.set)
    t = cfg.training
    rows = args.minibatch or t.minibatch_size
    algo = MAPPO(cfg)
    if args.reread:  # the tables again from OUT's HLO, trace and timings, nothing run
        with open(os.path.join(out, "grad.hlo.txt")) as f:
            hlo_text = f.read()
        with open(os.path.join(out, "ops.json")) as f:
            timing = json.load(f)["timing_ms"]
        module = re.match(r"HloModule ([\w.\-]+)", hlo_text).group(1)
        events, trace_path = read_trace(os.path.join(out, "trace"), module)
        instrs, comps, _, tables = parse_hlo(hlo_text)
        report(
            args, jax, rows, module, events, trace_path, instrs, comps, tables, algo, out, timing
        )
        return
    env_params = env_params_for(cfg, load_market(cfg), "train", None)
    state = jax.jit(algo.init)(jax.random.key(cfg.seed), env_params)
    steps = -(-rows // t.num_envs)  # enough rollout steps for one minibatch of real data
    _, traj = jax.jit(algo.rollout, static_argnums=2)(state, env_params, steps)
    adv, targets, _ = algo.advantages(state, traj)
    flat = jax.tree.map(
        lambda x: x.reshape(-1, *x.shape[2:]),
        Batch(traj.bar, traj.actions, traj.log_probs, traj.value, adv, targets),
    )
    mb = jax.tree.map(lambda x: x[:rows], flat)

    def minibatch_grad(params, constants, batch, env_params, hp):
        # as MAPPO.learn's minibatch_step
        return jax.grad(algo.loss, has_aux=True)(params, constants, batch, env_params, hp)

    def minibatch_loss(params, constants, batch, env_params, hp):
        return algo.loss(params, constants, batch, env_params, hp)

    inputs = (state.params, state.constants, mb, env_params, state.hparams)
    started = time.perf_counter()
    grad = jax.jit(minibatch_grad).lower(*inputs).compile()
    compile_s = time.perf_counter() - started
    loss = jax.jit(minibatch_loss).lower(*inputs).compile()
    hlo_text = grad.as_text()
    with open(os.path.join(out, "grad.hlo.txt"), "w") as f:
        f.write(hlo_text)
    module = re.match(r"HloModule ([\w.\-]+)", hlo_text).group(1)

    def median_ms(fn) -> float:
        for _ in range(2):
            jax.block_until_ready(fn(*inputs))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*inputs))
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    load_before = os.getloadavg()
    grad_ms = median_ms(grad)
    loss_ms = median_ms(loss)
    trace_dir = os.path.join(out, "trace")
    traced = []
    with jax.profiler.trace(trace_dir):
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(grad(*inputs))
            traced.append((time.perf_counter() - start) * 1e3)
    grad_after_ms = median_ms(grad)
    # the machine's matmul rate, for the dots' GFLOP/s: a 1024^3 float32 product, best of 5
    a = jax.numpy.ones((1024, 1024), jax.numpy.float32)
    matmul = jax.jit(lambda x: x @ x).lower(a).compile()
    jax.block_until_ready(matmul(a))
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    ref_gflops = 2 * 1024**3 / best / 1e9

    events, trace_path = read_trace(trace_dir, module)
    instrs, comps, _, tables = parse_hlo(hlo_text)
    report(
        args,
        jax,
        rows,
        module,
        events,
        trace_path,
        instrs,
        comps,
        tables,
        algo,
        out,
        dict(
            grad_ms=grad_ms,
            loss_ms=loss_ms,
            traced_ms=statistics.median(traced),
            grad_after_ms=grad_after_ms,
            ref_gflops=ref_gflops,
            load_before=load_before,
            load_after=os.getloadavg(),
            compile_s=compile_s,
        ),
    )


def report(
    args, jax, rows, module, events, trace_path, instrs, comps, tables, algo, out, timing
) -> None:
    nan = float("nan")
    timing = {"grad_after_ms": nan, "ref_gflops": nan, "load_before": (nan,) * 3, **timing}
    timing.setdefault("load_after", timing["load_before"])
    runs = sorted({e[0] for e in events})
    ncalls = len(runs)
    if not ncalls:
        raise SystemExit(f"the trace {trace_path} holds no events of {module}")
    models = {type(m).__name__: name for name, m in algo.modules.items()}

    # computation -> the instruction that calls it; instruction -> its users
    caller, users = {}, collections.defaultdict(list)
    for ins in instrs.values():
        for c in ins.calls:
            caller.setdefault(c, ins)
        for o in ins.operands:
            users[o].append(ins.name)

    def enclosing_while(ins: Instr | None) -> Instr | None:
        seen = set()
        while ins is not None and ins.computation not in seen:
            seen.add(ins.computation)
            parent = caller.get(ins.computation)
            if parent is not None and parent.opcode == "while":
                return parent
            ins = parent
        return None

    def metadata_of(ins: Instr | None) -> tuple[Instr | None, bool]:
        """The instruction whose metadata stands for ``ins``, and whether it was inferred:
        ``ins`` itself; else its nearest users with metadata (XLA's copies of zero-filled scan
        buffers feed a tuple that feeds a while), or None when those belong to several models;
        else its nearest operands with metadata; else the instruction calling its
        computation."""
        if ins is None or ins.op_name:
            return ins, False
        for step in (lambda n: users.get(n, []), lambda n: instrs[n].operands):
            seen, frontier = {ins.name}, [ins.name]
            for _ in range(4):
                nxt = [m for n in frontier for m in step(n) if m in instrs and m not in seen]
                seen.update(nxt)
                found = [instrs[n] for n in nxt if instrs[n].op_name]
                if found:
                    if len({model_of(f.op_name) for f in found}) > 1:
                        return None, True
                    return found[0], True
                frontier = nxt
        parent = caller.get(ins.computation)
        return (metadata_of(parent)[0] if parent is not None else None), True

    def model_of(name: str) -> str:
        m = re.search(r"jvp\((\w+)\)", name)
        if m and m.group(1) in models:
            return models[m.group(1)]
        return "loss (outside the models)"

    info = {}

    def op_info(op: str) -> dict:
        if op not in info:
            ins = instrs.get(op)
            meta, inferred = metadata_of(ins)
            name = (meta.op_name or "") if meta is not None else ""
            loop = enclosing_while(ins)
            shared = ins is not None and meta is None
            info[op] = dict(
                op=op,
                category=categorize(ins, comps, instrs),
                model="shared (XLA-made, several models)" if shared else model_of(name),
                backward="transpose(" in name,
                loop=loop.name if loop is not None else None,
                op_name=name,
                inferred=inferred,
                source=source_of(meta.frame if meta is not None else None, tables),
                what=describe(ins, comps) if ins is not None else "?",
                shape=ins.shape if ins is not None else "",
                flops=flops(ins, instrs, comps),
            )
        return info[op]

    # per op and call: own and inclusive time, executions; then the median over the calls
    acc = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0.0, 0, 0.0]))
    for run, op, own, dur in own_times(events):
        a = acc[op][run]
        a[0] += own
        a[1] += dur
        a[2] += 1
    whiles = {op for op in acc if op in instrs and instrs[op].opcode == "while"}
    shares, busy = wall_shares(events, whiles)
    for (run, op), us in shares.items():
        acc[op][run][3] += us
    # op -> [own us, inclusive us, executions, wall share us] per call (medians over calls)
    per_op = {}
    for op, by_run in acc.items():
        vals = [by_run.get(r, [0.0, 0.0, 0, 0.0]) for r in runs]
        per_op[op] = [statistics.median(v[k] for v in vals) for k in range(4)]
    total_us = sum(v[0] for v in per_op.values())
    total_share = sum(v[3] for v in per_op.values())
    run_totals = [sum(acc[op][r][0] for op in acc if r in acc[op]) for r in runs]
    spans = collections.defaultdict(lambda: [math.inf, -math.inf])
    for run, _tid, ts, dur, _op in events:
        spans[run][0] = min(spans[run][0], ts)
        spans[run][1] = max(spans[run][1], ts + dur)
    idle_ms = statistics.median((spans[r][1] - spans[r][0] - busy[r]) / 1e3 for r in runs)
    span_ms = statistics.median((b - a) / 1e3 for a, b in spans.values())
    threads = len({e[1] for e in events})

    def ms(us: float) -> str:
        return f"{us / 1e3:.2f}"

    def pct(us: float) -> str:
        return f"{100 * us / total_us:.1f}%"

    def grouped(key, where=lambda i: True):
        groups = collections.defaultdict(lambda: [0.0, 0, set(), 0.0])
        for op, (own, _inc, n, share) in per_op.items():
            i = op_info(op)
            if where(i):
                g = groups[key(i)]
                g[0] += own
                g[1] += n
                g[2].add(op)
                g[3] += share
        return sorted(groups.items(), key=lambda kv: -kv[1][0])

    def share_pct(us: float) -> str:
        return f"{100 * us / max(total_share, 1e-9):.1f}%"

    def group_rows(groups, total=True):
        out_rows = [
            [
                *(k if isinstance(k, tuple) else (k,)),
                ms(v[0]),
                pct(v[0]),
                ms(v[3]),
                share_pct(v[3]),
                f"{v[1]:.0f}",
                len(v[2]),
            ]
            for k, v in groups
        ]
        if total and groups:
            width = len(groups[0][0]) if isinstance(groups[0][0], tuple) else 1
            own = sum(v[0] for _, v in groups)
            share = sum(v[3] for _, v in groups)
            n = sum(v[1] for _, v in groups)
            ops = sum(len(v[2]) for _, v in groups)
            out_rows.append(
                [
                    "**total**",
                    *[""] * (width - 1),
                    ms(own),
                    pct(own),
                    ms(share),
                    share_pct(share),
                    f"{n:.0f}",
                    ops,
                ]
            )
        return out_rows

    def pass_of(i: dict) -> str:
        return "backward" if i["backward"] else "forward"

    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}; {args.config} "
        f"{' '.join(args.set)}; minibatch {rows} rows; {ncalls} traced calls "
        f"(per-op figures: median over the calls)"
    )
    print(
        f"trace: {trace_path} ({len(events)} hlo-op events of {module}, {threads} threads)\n"
        f"optimized HLO: {out}/grad.hlo.txt ({len(instrs)} instructions, "
        f"{len(comps)} computations)\n"
    )
    print(
        md_table(
            ["measure", "ms per gradient call"],
            [
                [
                    "gradient, wall (median, untraced; before / after the trace)",
                    f"{timing['grad_ms']:.1f} / {timing['grad_after_ms']:.1f}",
                ],
                ["loss forward alone, wall (median, untraced)", f"{timing['loss_ms']:.1f}"],
                ["gradient, wall under the profiler (median)", f"{timing['traced_ms']:.1f}"],
                ["first to last thunk of a traced call (median)", f"{span_ms:.1f}"],
                [
                    "thunks' own (thread) time summed (median per op; 100% of own)",
                    f"{total_us / 1e3:.1f}",
                ],
                [
                    "... their wall-clock shares summed (the busy time; 100% of wall)",
                    f"{total_share / 1e3:.1f}",
                ],
                [
                    "busy time per call (min / median / max)",
                    " / ".join(
                        f"{v / 1e3:.1f}"
                        for v in (
                            min(busy.values()),
                            statistics.median(busy.values()),
                            max(busy.values()),
                        )
                    ),
                ],
                [
                    "idle between thunks (first-to-last span less busy time, median)",
                    f"{idle_ms:.1f}",
                ],
                [
                    "thunks' own time summed, per call (min / median / max)",
                    " / ".join(
                        f"{v / 1e3:.1f}"
                        for v in (min(run_totals), statistics.median(run_totals), max(run_totals))
                    ),
                ],
                ["compile of the gradient, s", f"{timing['compile_s']:.1f}"],
                [
                    "reference: a 1024^3 float32 matmul (best of 5), GFLOP/s",
                    f"{timing['ref_gflops']:.0f}",
                ],
                [
                    "load average (1/5/15 min) before / after",
                    " / ".join(
                        "/".join(f"{v:.2f}" for v in timing[k])
                        for k in ("load_before", "load_after")
                    ),
                ],
            ],
        )
    )
    hdr = ["own ms/call", "% of own", "wall ms/call", "% of wall", "count/call", "distinct ops"]

    print("\nBy category:\n")
    print(md_table(["category", *hdr], group_rows(grouped(lambda i: i["category"]))))

    print("\nBy model and pass (forward = jvp, backward = transpose(jvp)):\n")
    print(
        md_table(["model", "pass", *hdr], group_rows(grouped(lambda i: (i["model"], pass_of(i)))))
    )

    print("\nBy model and pass, in the recurrent scans' loop bodies or outside them:\n")
    print(
        md_table(
            ["model", "pass", "where", *hdr],
            group_rows(
                grouped(lambda i: (i["model"], pass_of(i), "scan body" if i["loop"] else "outside"))
            ),
        )
    )

    for label, back in (("forward", False), ("backward", True)):
        g = grouped(
            lambda i: i["category"], lambda i, b=back: bool(i["loop"]) and i["backward"] == b
        )
        print(f"\nInside the {label} scans' loop bodies (all models), by category:\n")
        print(md_table(["category", *hdr], group_rows(g)))

    print("\nModel x category (ms/call, forward + backward):\n")
    cats = [k for k, _ in grouped(lambda i: i["category"])]
    mods = [k for k, _ in grouped(lambda i: i["model"])]
    cell = {k: v[0] for k, v in grouped(lambda i: (i["model"], i["category"]))}
    print(
        md_table(
            ["model", *cats],
            [[m, *(ms(cell[(m, c)]) if (m, c) in cell else "" for c in cats)] for m in mods],
        )
    )

    # a loop's time: its own plus that of every op in its body (the CPU runtime runs a while's
    # iterations as continuations after the while thunk's own event has ended, so the event's
    # duration does not cover them); the body's ops are found in the HLO
    loop_time = collections.defaultdict(lambda: [0.0, 0, collections.Counter()])
    for op, (own, _inc, n, _sh) in per_op.items():
        ins = instrs.get(op)
        if ins is not None and ins.opcode == "while":
            loop_time[op][0] += own
        w = enclosing_while(ins)
        while w is not None:
            lt = loop_time[w.name]
            lt[0] += own
            lt[1] += n
            lt[2][op_info(op)["category"]] += own
            w = enclosing_while(w)
    print("\nThe while loops (the recurrent scans; time = the loop's own + its body's ops):\n")
    wrows = []
    for op, (us, body_n, cats) in sorted(loop_time.items(), key=lambda kv: -kv[1][0]):
        ins = instrs[op]
        i = op_info(op)
        n = per_op.get(op, [0, 0, 0, 0])[2] or 1
        trips = ins.trip_count or 1
        top = ", ".join(f"{c} {100 * v / max(us, 1e-9):.0f}%" for c, v in cats.most_common(3))
        wrows.append(
            [
                f"`{op}`",
                i["model"],
                pass_of(i),
                ins.trip_count or "?",
                ms(us),
                pct(us),
                f"{us / n / trips:.1f}",
                f"{body_n / n / trips:.0f}",
                top,
                i["source"],
            ]
        )
    print(
        md_table(
            [
                "while",
                "model",
                "pass",
                "trips",
                "ms/call",
                "% of own",
                "us/iteration",
                "thunks/iteration",
                "body's top categories",
                "source",
            ],
            wrows,
        )
    )

    print("\nDots and convolutions by source line, pass and output shape (GFLOP/s: achieved):\n")
    dgroups = collections.defaultdict(lambda: [0.0, 0, 0.0, set(), set()])
    for op, (own, _inc, n, _sh) in per_op.items():
        i = op_info(op)
        if i["flops"] <= 0:
            continue
        shape = i["shape"].split("{")[0]
        key = (i["model"], pass_of(i), "scan body" if i["loop"] else "", i["source"], shape)
        g = dgroups[key]
        g[0] += own
        g[1] += n
        g[2] += i["flops"] * n
        g[3].add(op)
    drows = []
    ranked = sorted(dgroups.items(), key=lambda kv: -kv[1][0])
    for key, (us, n, fl, _ops, _) in ranked[: args.top + 5]:
        drows.append(
            [
                *key,
                f"{n:.0f}",
                ms(us),
                pct(us),
                f"{fl / 1e9:.3f}",
                f"{fl / max(us, 1e-9) / 1e3:.0f}",
                f"{us / max(n, 1):.1f}",
            ]
        )
    rest = ranked[args.top + 5 :]
    if rest:
        us = sum(v[0] for _, v in rest)
        drows.append(
            [
                "(the other rows)",
                "",
                "",
                "",
                "",
                f"{sum(v[1] for _, v in rest):.0f}",
                ms(us),
                pct(us),
                f"{sum(v[2] for _, v in rest) / 1e9:.3f}",
                f"{sum(v[2] for _, v in rest) / max(us, 1e-9) / 1e3:.0f}",
                "",
            ]
        )
    us = sum(v[0] for v in dgroups.values())
    fl = sum(v[2] for v in dgroups.values())
    drows.append(
        [
            "**all dots and convolutions**",
            "",
            "",
            "",
            "",
            "",
            ms(us),
            pct(us),
            f"{fl / 1e9:.3f}",
            f"{fl / max(us, 1e-9) / 1e3:.0f}",
            "",
        ]
    )
    print(
        md_table(
            [
                "model",
                "pass",
                "where",
                "source",
                "output shape",
                "count/call",
                "ms/call",
                "% of own",
                "GFLOP/call",
                "GFLOP/s",
                "us/exec",
            ],
            drows,
        )
    )

    print(f"\nTop {args.top} ops by own time:\n")
    trows = []
    for op, (own, _inc, n, _sh) in sorted(per_op.items(), key=lambda kv: -kv[1][0])[: args.top]:
        i = op_info(op)
        path = re.sub(r"^jit\([^)]*\)/", "", i["op_name"])
        via = " (inferred)" if i["inferred"] else ""
        trows.append(
            [
                f"`{op}`",
                i["category"],
                i["model"],
                "bwd" if i["backward"] else "fwd",
                "scan" if i["loop"] else "",
                ms(own),
                pct(own),
                f"{n:.0f}",
                f"{own / max(n, 1):.1f}",
                f"`{i['shape'][:40]}`",
                i["what"][:60],
                f"`{path[-80:]}`{via} {i['source']}",
            ]
        )
    print(
        md_table(
            [
                "op",
                "category",
                "model",
                "pass",
                "loop",
                "ms/call",
                "% of own",
                "count/call",
                "us/exec",
                "shape",
                "what",
                "from (op_name tail, source line)",
            ],
            trows,
        )
    )

    dump = {
        "config": args.config,
        "set": args.set,
        "minibatch": rows,
        "calls": ncalls,
        "timing_ms": timing,
        "ops_ms_per_call": total_us / 1e3,
        "ops": [
            {
                **op_info(op),
                "own_ms_per_call": v[0] / 1e3,
                "incl_ms_per_call": v[1] / 1e3,
                "count_per_call": v[2],
                "wall_share_ms_per_call": v[3] / 1e3,
            }
            for op, v in sorted(per_op.items(), key=lambda kv: -kv[1][0])
        ],
    }
    with open(os.path.join(out, "ops.json"), "w") as f:
        json.dump(dump, f, indent=1)
    print(f"\nevery op: {out}/ops.json")


if __name__ == "__main__":
    sys.exit(main())
