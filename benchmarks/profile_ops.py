"""Which ops one minibatch gradient spends its time on: a jax.profiler trace read per HLO op.

Compiles the trainer's per-minibatch gradient (``jax.grad(MAPPO.loss, has_aux=True)``, as
``MAPPO.learn`` takes it) on ``--minibatch`` rows of a real rollout, times it (median of
``--repeats`` calls after 2 warm-up calls), runs ``--repeats`` calls under
``jax.profiler.trace(OUT/trace)``, and prints the tables of ``benchmarks/RESULTS.md`` ("which ops
the gradient spends its time on"), in ms per gradient call.

The trace's ``<host>.trace.json.gz`` is a Chrome trace: the XLA CPU runtime records one event
per executed thunk, with ``args.hlo_op`` (the instruction's name in the optimized HLO,
``compiled.as_text()``, saved as ``OUT/grad.hlo.txt``) and ``args.run_id`` (one per call). An
op's *own* time is its event less the events nested in it on the same thread; its *wall* share
splits every instant evenly among the ops running then (thunks run on several threads). A
``while`` thunk's event ends before its iterations run, so a loop's time is summed from its
body's ops. The HLO gives each op its category (opcode, ops fused into it), its model and pass
(``op_name`` metadata: ``jvp(NWRQKActor)/...``; ``transpose(jvp(...))`` is the backward), its
source line and the FLOPs of dots and convolutions. Ops without metadata (XLA's copies and zero
fills) take their nearest users'. ``OUT/ops.json`` holds every op's row.

    python benchmarks/profile_ops.py --config configs/quickstart.yaml --minibatch 512
    python benchmarks/profile_ops.py --config configs/strategic_marl_v1.yaml --minibatch 64
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
import tempfile
import time

import jax

from marl_jax.config import load_config
from marl_jax.mappo import MAPPO, Batch
from marl_jax.run.setup import env_params_for, load_market

# ------------------------------------------------------------------ the optimized HLO


class Instr:
    """One HLO instruction: its computation, opcode, shape, operands and metadata."""

    def __init__(self, name: str, computation: str, line: str, is_root: bool, rest: str):
        self.name, self.computation, self.line, self.is_root = name, computation, line, is_root
        self.shape, tail = _split_shape(rest)
        m = re.match(r"([\w\-]+)\(", tail)
        self.opcode = m.group(1) if m else tail.split("(")[0]
        self.operands = re.findall(r"%([\w.\-]+)", _split_shape(tail[len(self.opcode) :])[0])
        self.calls = re.findall(r"calls=%([\w.\-]+)", line)
        self.trip_count = None
        if self.opcode == "while":
            self.calls += re.findall(r"(?:body|condition)=%([\w.\-]+)", line)
            tc = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            self.trip_count = int(tc.group(1)) if tc else None
        branches = re.search(r"branch_computations=\{([^}]*)\}", line)
        if branches:
            self.calls += re.findall(r"%([\w.\-]+)", branches.group(1))

        def attr(pattern: str) -> str | None:
            m = re.search(pattern, line)
            return m.group(1) if m else None

        self.fusion_kind = attr(r"kind=(k\w+)")
        self.backend_kind = attr(r'"fusion_config":\{"kind":"([^"]+)"')
        self.op_name = attr(r'op_name="([^"]*)"')
        self.target = attr(r'custom_call_target="([^"]*)"')
        self.frame = attr(r"metadata=\{[^}]*stack_frame_id=(\d+)")


def _split_shape(rest: str) -> tuple[str, str]:
    """``(shape, remainder)`` of ``f32[8,32]{1,0} dot(...)`` or ``(s32[], ...) while(...)``."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def parse_hlo(text: str):
    """Instructions by name, each computation's instructions, and the source lines of the
    ``StackFrames`` ids (``file.py:line function``)."""
    instrs: dict[str, Instr] = {}
    comps: dict[str, list[Instr]] = {}
    tables = {s: {} for s in ("FileNames", "FunctionNames", "FileLocations", "StackFrames")}
    comp = section = None
    for line in text.splitlines():
        if line in tables:
            section = line
            continue
        if section and line[:1].isdigit():
            key, _, val = line.partition(" ")
            fields = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", val)}
            tables[section][key] = val.strip('"') if section.endswith("Names") else fields
            continue
        section = None
        m = re.match(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
        if m:
            comp = m.group(1)
            comps[comp] = []
            continue
        m = re.match(r"^\s+(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$", line)
        if m and comp is not None:
            ins = Instr(m.group(2), comp, line, bool(m.group(1)), m.group(3))
            instrs[ins.name] = ins
            comps[comp].append(ins)
    files, funcs, locs = (tables[k] for k in ("FileNames", "FunctionNames", "FileLocations"))
    sources = {}
    for frame, fields in tables["StackFrames"].items():
        loc = locs.get(str(fields.get("file_location_id")))
        if loc:
            path = os.path.basename(files.get(str(loc.get("file_name_id")), "?"))
            function = funcs.get(str(loc.get("function_name_id")), "")
            sources[frame] = f"{path}:{loc.get('line')} {function}"
    return instrs, comps, sources


MOVEMENT = set(
    "parameter constant tuple get-tuple-element bitcast reshape copy transpose broadcast slice "
    "concatenate pad reverse iota dynamic-slice dynamic-update-slice".split()
)


def fused_opcodes(ins: Instr, comps) -> collections.Counter:
    """Opcodes inside a fusion (nested fusions included)."""
    counts, stack = collections.Counter(), list(ins.calls)
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
                todo.extend(body[o] for o in r.operands if o in body)
            else:
                roots.add(r.opcode)
    return roots


def is_constant_fill(ins: Instr | None, instrs, comps) -> bool:
    """A broadcast of constants (``jnp.zeros`` and the like), plain or wrapped in a fusion."""
    if ins is None or ins.opcode == "constant":
        return ins is not None
    fill = ins.opcode == "broadcast" or (
        ins.opcode == "fusion"
        and set(fused_opcodes(ins, comps)) <= {"parameter", "constant", "broadcast", "bitcast"}
    )
    return fill and all(is_constant_fill(instrs.get(o), instrs, comps) for o in ins.operands)


def dims(shape: str) -> list[int]:
    m = re.match(r"\w+\[([\d,]*)\]", shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def flops(ins: Instr | None, instrs, comps) -> float:
    """FLOPs (2 per multiply-add) of a dot or convolution, or of those fused into ``ins``."""
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
    subs = [s for c in ins.calls for s in comps.get(c, [])] if ins.opcode == "fusion" else []
    return sum(flops(sub, instrs, comps) for sub in subs)


def categorize(ins: Instr | None, comps, instrs) -> str:
    if ins is None:
        return "unmapped thunk"
    op = ins.opcode
    inner = fused_opcodes(ins, comps) if op == "fusion" else collections.Counter()
    plain_copy = op == "copy" or (op == "fusion" and set(inner) <= {"parameter", "copy", "bitcast"})
    if plain_copy and all(is_constant_fill(instrs.get(o), instrs, comps) for o in ins.operands):
        return "copy of a zero fill (scan buffer init)"
    if op in ("broadcast", "fusion") and is_constant_fill(ins, instrs, comps):
        return "broadcast of a constant (zero fill)"
    plain = {
        "while": "while loop (own time)",
        "conditional": "conditional/call (own time)",
        "call": "conditional/call (own time)",
        "dot": "dot (matmul)",
        "convolution": "convolution",
        "custom-call": f"custom-call {ins.target}",
        "gather": "gather/scatter",
        "scatter": "gather/scatter",
        "reduce": "reduce",
        "reduce-window": "reduce",
        "copy": "transpose/copy (layout)",
        "transpose": "transpose/copy (layout)",
        "dynamic-update-slice": "dynamic-update-slice",
        "dynamic-slice": "dynamic-slice",
    }
    if op in plain:
        return plain[op]
    if op in MOVEMENT:
        return "concat/slice/pad/broadcast"
    if op != "fusion":
        return op
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
        return "dynamic-slice" if "dynamic-slice" in inner else "concat/slice/pad/broadcast"
    return "elementwise fusion"


def describe(ins: Instr, comps) -> str:
    """A fusion's contents in short: ``kLoop: multiply x4, add x2, tanh``."""
    if ins.opcode != "fusion":
        return ins.opcode + (f" {ins.target}" if ins.target else "")
    skip = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
    inner = fused_opcodes(ins, comps).most_common()
    parts = [f"{op} x{n}" if n > 1 else op for op, n in inner if op not in skip][:5]
    return f"{(ins.backend_kind or ins.fusion_kind or '').strip('_')}: {', '.join(parts)}"


# ------------------------------------------------------------------ the trace


def read_trace(trace_dir: str, module: str):
    """``[(run_id, thread, start, duration, op)]`` (us) of ``module``'s thunks in the newest
    trace under ``trace_dir``, and that file."""
    paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    if not paths:
        raise SystemExit(f"no *.trace.json.gz under {trace_dir}/plugins/profile")
    path = max(paths, key=os.path.getmtime)
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = []
    for e in trace.get("traceEvents", []):
        a = e.get("args") or {}
        if e.get("ph") == "X" and a.get("hlo_module") == module and "hlo_op" in a:
            events.append((a.get("run_id"), e["tid"], e["ts"], e.get("dur", 0.0), a["hlo_op"]))
    return events, path


def own_times(events):
    """Per event ``[run, op, own us, duration us]``: own = duration less the events nested in
    it on the same thread."""
    by_tid = collections.defaultdict(list)
    for ev in events:
        by_tid[ev[1]].append(ev)
    out = []
    for evs in by_tid.values():
        stack: list[list] = []  # [end, index in out]
        for run, _, ts, dur, op in sorted(evs, key=lambda e: (e[2], -e[3])):
            while stack and stack[-1][0] <= ts + 1e-3:
                stack.pop()
            if stack:
                out[stack[-1][1]][2] -= dur
            out.append([run, op, dur, dur])
            stack.append([ts + dur, len(out) - 1])
    return out


def wall_shares(events, skip):
    """Per ``(run, op)`` its share of the wall clock (us): each instant split evenly among the
    ops running then (``skip``: the while loops, whose events enclose their bodies'); and per
    run the time during which at least one op ran."""
    by_run = collections.defaultdict(list)
    for run, _tid, ts, dur, op in events:
        if op not in skip:
            by_run[run] += [(ts, 1, op), (ts + dur, -1, op)]
    shares, busy = collections.defaultdict(float), {}
    for run, edges in by_run.items():
        edges.sort(key=lambda e: (e[0], e[1]))
        active: collections.Counter = collections.Counter()
        last, busy[run] = edges[0][0], 0.0
        for t, kind, op in edges:
            n = sum(active.values())
            if n and t > last:
                for a, k in active.items():
                    shares[(run, a)] += (t - last) * k / n
                busy[run] += t - last
            last = t
            active[op] += kind
            if active[op] <= 0:
                del active[op]
    return shares, busy


# ------------------------------------------------------------------ measuring


def measure(cfg, rows: int, repeats: int, out: str):
    """Compiles and times the minibatch gradient, traces ``repeats`` calls into ``OUT/trace``;
    returns the optimized HLO's text, the algorithm and the timings."""
    t = cfg.training
    algo = MAPPO(cfg)
    env_params = env_params_for(cfg, load_market(cfg), "train", None)
    state = jax.jit(algo.init)(jax.random.key(cfg.seed), env_params)
    steps = -(-rows // t.num_envs)  # enough rollout steps for one minibatch of real data
    _, traj = jax.jit(algo.rollout, static_argnums=2)(state, env_params, steps)
    adv, targets, _ = algo.advantages(state, traj)
    batch = Batch(traj.bar, traj.actions, traj.log_probs, traj.value, adv, targets)
    mb = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:rows], batch)

    def minibatch_grad(params, constants, batch, env_params, hp):  # as MAPPO.learn's
        return jax.grad(algo.loss, has_aux=True)(params, constants, batch, env_params, hp)

    inputs = (state.params, state.constants, mb, env_params, state.hparams)
    started = time.perf_counter()
    grad = jax.jit(minibatch_grad).lower(*inputs).compile()
    compile_s = time.perf_counter() - started
    loss = jax.jit(algo.loss).lower(*inputs).compile()

    def median_ms(fn) -> float:
        for _ in range(2):
            call_ms(fn, *inputs)
        return statistics.median(call_ms(fn, *inputs) for _ in range(repeats))

    load_before = os.getloadavg()
    grad_ms, loss_ms = median_ms(grad), median_ms(loss)
    with jax.profiler.trace(os.path.join(out, "trace")):
        traced_ms = statistics.median(call_ms(grad, *inputs) for _ in range(repeats))
    grad_after_ms = median_ms(grad)
    # the machine's matmul rate, for the dots' GFLOP/s: a 1024^3 float32 product, best of 5
    a = jax.numpy.ones((1024, 1024), jax.numpy.float32)
    matmul = jax.jit(lambda x: x @ x).lower(a).compile()
    jax.block_until_ready(matmul(a))
    best_s = min(call_ms(matmul, a) for _ in range(5)) / 1e3
    timing = dict(
        grad_ms=grad_ms,
        loss_ms=loss_ms,
        traced_ms=traced_ms,
        grad_after_ms=grad_after_ms,
        ref_gflops=2 * 1024**3 / best_s / 1e9,
        load_before=load_before,
        load_after=os.getloadavg(),
        compile_s=compile_s,
    )
    return grad.as_text(), algo, timing


def call_ms(fn, *args) -> float:
    """Milliseconds of one call of ``fn``, until its results are ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) * 1e3


# ------------------------------------------------------------------ the tables


def md_table(header: str, rows: list[list]) -> str:
    """A markdown table; ``header`` is the column names joined by ``|``."""
    lines = [f"| {header.replace('|', ' | ')} |", "|" + "---|" * len(header.split("|"))]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def op_rows(instrs, comps, sources, algo):
    """The function giving an op's row (category, model, pass, loop, source, shape, FLOPs, ...),
    and the one giving an instruction's innermost enclosing while loop."""
    models = {type(m).__name__: name for name, m in algo.modules.items()}
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
            ins = caller.get(ins.computation)
            if ins is not None and ins.opcode == "while":
                return ins
        return None

    def model_of(name: str) -> str:
        m = re.search(r"jvp\((\w+)\)", name)
        return models[m.group(1)] if m and m.group(1) in models else "loss (outside the models)"

    def metadata_of(ins: Instr | None) -> tuple[Instr | None, bool]:
        """The instruction whose metadata stands for ``ins``, and whether it was inferred:
        ``ins``; else its nearest users with metadata (XLA's copies of zero-filled scan buffers
        feed a tuple that feeds a while), None when those belong to several models; else its
        nearest operands with metadata; else the instruction calling its computation."""
        if ins is None or ins.op_name:
            return ins, False
        for step in (lambda n: users.get(n, []), lambda n: instrs[n].operands):
            seen, frontier = {ins.name}, [ins.name]
            for _ in range(4):
                frontier = [m for n in frontier for m in step(n) if m in instrs and m not in seen]
                seen.update(frontier)
                found = [instrs[n] for n in frontier if instrs[n].op_name]
                if found:
                    one = len({model_of(f.op_name) for f in found}) == 1
                    return (found[0] if one else None), True
        parent = caller.get(ins.computation)
        return (metadata_of(parent)[0] if parent is not None else None), True

    def row(op: str) -> dict:
        ins = instrs.get(op)
        meta, inferred = metadata_of(ins)
        name = (meta.op_name or "") if meta is not None else ""
        loop = enclosing_while(ins)
        shared = ins is not None and meta is None
        return dict(
            op=op,
            category=categorize(ins, comps, instrs),
            model="shared (XLA-made, several models)" if shared else model_of(name),
            backward="transpose(" in name,
            loop=loop.name if loop is not None else None,
            op_name=name,
            inferred=inferred,
            source=sources.get(meta.frame, "") if meta is not None else "",
            what=describe(ins, comps) if ins is not None else "?",
            shape=ins.shape if ins is not None else "",
            flops=flops(ins, instrs, comps),
        )

    return row, enclosing_while


def report(args, rows: int, hlo_text: str, algo, timing: dict, out: str) -> None:
    module = re.match(r"HloModule ([\w.\-]+)", hlo_text).group(1)
    events, trace_path = read_trace(os.path.join(out, "trace"), module)
    instrs, comps, sources = parse_hlo(hlo_text)
    row, enclosing_while = op_rows(instrs, comps, sources, algo)
    runs = sorted({e[0] for e in events})
    if not runs:
        raise SystemExit(f"the trace {trace_path} holds no events of {module}")

    # per op and call: own us, inclusive us, executions, wall share us; medians over the calls
    acc = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0.0, 0, 0.0]))
    for run, op, own, dur in own_times(events):
        a = acc[op][run]
        a[0], a[1], a[2] = a[0] + own, a[1] + dur, a[2] + 1
    whiles = {op for op in acc if op in instrs and instrs[op].opcode == "while"}
    shares, busy = wall_shares(events, whiles)
    for (run, op), us in shares.items():
        acc[op][run][3] += us
    per_op = {
        op: [
            statistics.median(by_run.get(r, [0.0, 0.0, 0, 0.0])[k] for r in runs) for k in range(4)
        ]
        for op, by_run in acc.items()
    }
    info = {op: row(op) for op in per_op}
    total_us = sum(v[0] for v in per_op.values())
    total_share = sum(v[3] for v in per_op.values())
    run_totals = [sum(acc[op][r][0] for op in acc if r in acc[op]) for r in runs]
    spans = collections.defaultdict(lambda: [math.inf, -math.inf])
    for run, _tid, ts, dur, _op in events:
        spans[run] = [min(spans[run][0], ts), max(spans[run][1], ts + dur)]

    def ms(us: float) -> str:
        return f"{us / 1e3:.2f}"

    def pct(us: float, total: float = total_us) -> str:
        return f"{100 * us / max(total, 1e-9):.1f}%"

    def three(values) -> str:
        values = list(values)
        mid = statistics.median(values)
        return " / ".join(f"{v / 1e3:.1f}" for v in (min(values), mid, max(values)))

    def pass_of(i: dict) -> str:
        return "backward" if i["backward"] else "forward"

    def grouped(key, where=lambda i: True) -> list[list]:
        """Rows of ops grouped by ``key(op row)``, the costliest first, and a total row."""
        groups = collections.defaultdict(lambda: [0.0, 0, set(), 0.0])
        for op, (own, _inc, n, share) in per_op.items():
            if where(info[op]):
                g = groups[key(info[op])]
                g[0], g[1], g[3] = g[0] + own, g[1] + n, g[3] + share
                g[2].add(op)
        items = sorted(groups.items(), key=lambda kv: -kv[1][0])
        if not items:
            return []
        sums = [sum(v[k] if k != 2 else len(v[2]) for _, v in items) for k in range(4)]
        width = len(items[0][0]) if isinstance(items[0][0], tuple) else 1
        keyed = [
            (k if isinstance(k, tuple) else (k,), v[0], v[1], len(v[2]), v[3]) for k, v in items
        ]
        keyed.append((("**total**", *[""] * (width - 1)), sums[0], sums[1], sums[2], sums[3]))
        return [
            [*k, ms(own), pct(own), ms(share), pct(share, total_share), f"{n:.0f}", distinct]
            for k, own, n, distinct, share in keyed
        ]

    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform}; {args.config} "
        f"{' '.join(args.set)}; minibatch {rows} rows; {len(runs)} traced calls (per-op figures: "
        f"median over the calls)\ntrace: {trace_path} ({len(events)} hlo-op events of {module}, "
        f"{len({e[1] for e in events})} threads)\noptimized HLO: {out}/grad.hlo.txt\n"
    )
    load = " / ".join(
        "/".join(f"{v:.2f}" for v in timing[k]) for k in ("load_before", "load_after")
    )
    totals = [
        (
            "gradient, wall (median, untraced; before / after the trace)",
            f"{timing['grad_ms']:.1f} / {timing['grad_after_ms']:.1f}",
        ),
        ("loss forward alone, wall (median, untraced)", f"{timing['loss_ms']:.1f}"),
        ("gradient, wall under the profiler (median)", f"{timing['traced_ms']:.1f}"),
        (
            "first to last thunk of a traced call (median)",
            f"{statistics.median((b - a) / 1e3 for a, b in spans.values()):.1f}",
        ),
        ("thunks' own (thread) time summed (median per op; 100% of own)", f"{total_us / 1e3:.1f}"),
        (
            "... their wall-clock shares summed (the busy time; 100% of wall)",
            f"{total_share / 1e3:.1f}",
        ),
        ("busy time per call (min / median / max)", three(busy.values())),
        (
            "idle between thunks (first-to-last span less busy time, median)",
            f"{statistics.median((spans[r][1] - spans[r][0] - busy[r]) / 1e3 for r in runs):.1f}",
        ),
        ("thunks' own time summed, per call (min / median / max)", three(run_totals)),
        ("compile of the gradient, s", f"{timing['compile_s']:.1f}"),
        ("reference: a 1024^3 float32 matmul (best of 5), GFLOP/s", f"{timing['ref_gflops']:.0f}"),
        ("load average (1/5/15 min) before / after", load),
    ]
    print(md_table("measure|ms per gradient call", [list(row) for row in totals]))
    hdr = "own ms/call|% of own|wall ms/call|% of wall|count/call|distinct ops"
    print("\nBy category:\n")
    print(md_table(f"category|{hdr}", grouped(lambda i: i["category"])))
    print("\nBy model and pass (forward = jvp, backward = transpose(jvp)):\n")
    print(md_table(f"model|pass|{hdr}", grouped(lambda i: (i["model"], pass_of(i)))))
    for label, back in (("forward", False), ("backward", True)):
        print(f"\nInside the {label} scans' loop bodies (all models), by category:\n")
        inside = grouped(
            lambda i: i["category"], lambda i, b=back: bool(i["loop"]) and i["backward"] == b
        )
        print(md_table(f"category|{hdr}", inside))

    # a loop's time: its own and that of every op in its body, found in the HLO
    loops = collections.defaultdict(lambda: [0.0, 0])
    for op, (own, _inc, n, _sh) in per_op.items():
        ins = instrs.get(op)
        if ins is not None and ins.opcode == "while":
            loops[op][0] += own
        w = enclosing_while(ins)
        while w is not None:
            loops[w.name][0] += own
            loops[w.name][1] += n
            w = enclosing_while(w)
    wrows = []
    for op, (us, body_n) in sorted(loops.items(), key=lambda kv: -kv[1][0]):
        i, trips = info.get(op) or row(op), instrs[op].trip_count
        iterations = (per_op.get(op, [0, 0, 0])[2] or 1) * (trips or 1)  # per call
        per_iteration = [f"{us / iterations:.1f}", f"{body_n / iterations:.0f}"]
        cells = [f"`{op}`", i["model"], pass_of(i), trips or "?", ms(us), pct(us), *per_iteration]
        wrows.append(cells)
    print("\nThe while loops (the recurrent scans; time = the loop's own + its body's ops):\n")
    print(md_table("while|model|pass|trips|ms/call|% of own|us/iteration|thunks/iteration", wrows))

    dots = collections.defaultdict(lambda: [0.0, 0, 0.0])
    for op, (own, _inc, n, _sh) in per_op.items():
        i = info[op]
        if i["flops"] > 0:
            shape = i["shape"].split("{")[0]
            g = dots[(i["model"], pass_of(i), "scan body" if i["loop"] else "", i["source"], shape)]
            g[0], g[1], g[2] = g[0] + own, g[1] + n, g[2] + i["flops"] * n

    def dot_row(key, us, n, fl, per_exec=True) -> list:
        rate = f"{fl / max(us, 1e-9) / 1e3:.0f}"
        exec_us = f"{us / max(n, 1):.1f}" if per_exec else ""
        count = f"{n:.0f}" if n is not None else ""
        return [*key, count, ms(us), pct(us), f"{fl / 1e9:.3f}", rate, exec_us]

    ranked = sorted(dots.items(), key=lambda kv: -kv[1][0])
    drows = [dot_row(k, *v) for k, v in ranked[: args.top + 5]]
    rest = [v for _, v in ranked[args.top + 5 :]]
    if rest:
        rest_sums = [sum(v[k] for v in rest) for k in range(3)]
        drows.append(dot_row(("(the other rows)", "", "", "", ""), *rest_sums, per_exec=False))
    all_sums = [sum(v[0] for v in dots.values()), None, sum(v[2] for v in dots.values())]
    drows.append(dot_row(("**all dots and convolutions**", *[""] * 4), *all_sums, per_exec=False))
    print("\nDots and convolutions by source line, pass and output shape (GFLOP/s: achieved):\n")
    cols = "model|pass|where|source|output shape|count/call|ms/call|% of own|GFLOP/call|GFLOP/s"
    print(md_table(f"{cols}|us/exec", drows))

    trows = []
    for op, (own, _inc, n, _sh) in sorted(per_op.items(), key=lambda kv: -kv[1][0])[: args.top]:
        i = info[op]
        path = re.sub(r"^jit\([^)]*\)/", "", i["op_name"])
        via = f"`{path[-80:]}`{' (inferred)' if i['inferred'] else ''} {i['source']}"
        shape, loop = f"`{i['shape'][:40]}`", "scan" if i["loop"] else ""
        trows.append(
            [f"`{op}`", i["category"], i["model"], "bwd" if i["backward"] else "fwd", loop]
            + [ms(own), pct(own), f"{n:.0f}", f"{own / max(n, 1):.1f}", shape, i["what"][:60], via]
        )
    print(f"\nTop {args.top} ops by own time:\n")
    cols = "op|category|model|pass|loop|ms/call|% of own|count/call|us/exec|shape|what"
    print(md_table(f"{cols}|from (op_name tail, source line)", trows))

    ops = [
        {**info[op], "own_ms_per_call": v[0] / 1e3, "incl_ms_per_call": v[1] / 1e3}
        | {"count_per_call": v[2], "wall_share_ms_per_call": v[3] / 1e3}
        for op, v in sorted(per_op.items(), key=lambda kv: -kv[1][0])
    ]
    dump = {"config": args.config, "set": args.set, "minibatch": rows, "calls": len(runs)}
    dump |= {"timing_ms": timing, "ops_ms_per_call": total_us / 1e3, "ops": ops}
    with open(os.path.join(out, "ops.json"), "w") as f:
        json.dump(dump, f, indent=1)
    print(f"\nevery op: {out}/ops.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--minibatch", type=int, help="rows (default: the config's minibatch size)")
    default_out = os.path.join(tempfile.gettempdir(), "marl_jax_profile_ops")
    ap.add_argument("--out", default=default_out, help="folder for the trace, HLO and ops.json")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls, then traced calls")
    ap.add_argument("--top", type=int, default=15, help="individual ops to list")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    cfg = load_config(args.config, args.set)
    rows = args.minibatch or cfg.training.minibatch_size
    hlo_text, algo, timing = measure(cfg, rows, args.repeats, out)
    with open(os.path.join(out, "grad.hlo.txt"), "w") as f:
        f.write(hlo_text)
    report(args, rows, hlo_text, algo, timing, out)


if __name__ == "__main__":
    main()
