"""``csr-ros bench evict``: TTFT through many eviction cycles, with ASR and with synchronous eviction.

One frame loop per mode, on the real clock: every frame (``1 / increment_hz``) one perception
increment (~20 tokens, facts attached) is accepted and appended; every ``increment_hz / query_hz``-th
frame a short question is asked instead (first token only: the frame's increment + the question in
ONE forward; ``--ride-along`` lets all increments wait for the next question). TTFT is measured
from the question's *scheduled arrival* to its first token, so anything that holds the loop up
shows.

* ``asr``  - the reconciler builds compacted states on a second thread with its own torch
  thread budget (``--rebuild-threads``); the loop only swaps them in at frame boundaries.
* ``sync`` - the baseline: when the state reaches the high-water mark, the next query frame
  compacts and re-prefills on the query path (``--sync-threads``, default 1 = the asr inference budget).

Both use the same compaction policy (default ``entity_memory``), so ``lost_increments`` compares
like with like: accepted increments that are neither in the final state nor represented by its
memory block (increments dropped by ``drop_oldest`` are reported as ``evicted_by_policy``).
The state is filled to just under the high-water mark before timing starts (untimed warm-up).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import time
from dataclasses import dataclass, field

from csr_ros.cli.bench import gpu_opts
from csr_ros.cli.bench.common import add_model_args, add_server_args, device_name, percentile, write_json
from csr_ros.core.state.ledger import Fact

S = 1_000_000_000
QUESTION = "Where is the red cup now, and what did the person ask for?"
OBJECTS = ("red_cup", "blue_box", "green_bottle")
PLACES = ("kitchen table", "sink", "shelf", "sofa", "desk", "floor")


def observation(k: int, stamp_ns: int) -> tuple[str, str, tuple[Fact, ...]]:
    """The k-th increment of the deterministic stream: ``(source, text, facts)``."""
    kind = k % 5
    if kind == 0:
        val = f"shoulder {0.1 * (k % 7):.1f} elbow {1.5 - 0.1 * (k % 5):.1f}"
        return "/joints", val, (Fact("arm", "joints", val, stamp_ns),)
    if kind in (1, 3):
        obj, place = OBJECTS[(k // 5 + kind) % 3], PLACES[(k * 7 + kind) % 6]
        return "/objects", f"{obj.replace('_', ' ')} on the {place}", (Fact(obj, "location", place, stamp_ns),)
    if kind == 2:
        val = f"x {k % 9 * 0.5:.1f} y {k % 4 * 0.5:.1f}"
        return "/odom", val, (Fact("robot", "pose", val, stamp_ns),)
    if k % 4 == 0:
        return "/speech", f"person: bring me the {OBJECTS[k % 3].replace('_', ' ')}", ()
    val = f"{100 - k % 60} percent"
    return "/battery", val, (Fact("robot", "battery", val, stamp_ns),)


@dataclass
class ModeResult:
    """Raw samples of one mode (times in seconds since the mode's start)."""

    mode: str
    queries: list[dict] = field(default_factory=list)  # t_s, ttft_ms, state_tokens, rebuilding
    swaps: list[float] = field(default_factory=list)
    rebuild_ms: list[float] = field(default_factory=list)
    rebuild_cpu_ms: list[float] = field(default_factory=list)  # asr: CPU time of the reconciler thread
    busy_s: float = 0.0  # time the reconciler spent building (asr)
    load_avg: list[float] = field(default_factory=list)  # 1-min load average at the mode's start/end
    external_cores: float = 0.0  # mean CPU cores used by OTHER processes during the mode
    wall_s: float = 0.0
    accounting: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)


def _cpu_busy_s() -> tuple[float, float]:
    """(CPU seconds all processes were busy, CPU seconds of this process) so far (Linux; 0s elsewhere)."""
    try:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = 0.0
    t = os.times()
    return busy, t.user + t.system


def _gate_report(be) -> dict:
    """What the CPU hot-path gate did over the whole run (csr_ros.core.reconcile.hot_path)."""
    import dataclasses

    from csr_ros.core.reconcile.hot_path import gate_of

    g = gate_of(be)
    return {"enabled": g.enabled, **dataclasses.asdict(g.counters)}


def _scheduling() -> dict:
    """How this process was scheduled against other tenants of the machine (Linux): its nice
    value and whether the kernel's autogroup (which makes nice relative to the session only) was on."""
    try:
        autogroup = open("/proc/sys/kernel/sched_autogroup_enabled").read().strip() == "1"
    except OSError:
        autogroup = None
    return {"nice": os.nice(0), "autogroup": autogroup, "cpus": os.cpu_count()}


def _sync_threads(args) -> int:
    """Torch threads of the sync baseline: ``--sync-threads``, else what an asr query gets."""
    return args.sync_threads or max(args.threads, args.hot_threads, 1)


def _thread_rusage() -> tuple[int, float]:
    """(minor page faults, system CPU ms) of the calling thread so far (Linux; zeros elsewhere)."""
    try:
        ru = resource.getrusage(resource.RUSAGE_THREAD)
    except (AttributeError, OSError):
        return 0, 0.0
    return ru.ru_minflt, ru.ru_stime * 1e3


def _stats(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    p50 = percentile(ms, 50)
    return {"n": len(ms), "p50": round(p50, 2), "p99": round(percentile(ms, 99), 2), "max": round(max(ms), 2),
            "p99_over_p50": round(percentile(ms, 99) / p50, 3), "max_over_p50": round(max(ms) / p50, 3)}


def account(eng, accepted: list[int]) -> dict:
    """Accepted increments vs those in the state, represented by the memory block, and lost."""
    in_state = {i.seq for i in eng.ledger.increments} | {i.seq for i in eng.pending}
    covers = eng.ledger.memory.covers_through_seq
    represented = {s for s in accepted if s not in in_state and s <= covers}
    dropped = eng.counters.evicted_by_policy
    return {"accepted": len(accepted), "in_state": len(in_state), "represented_in_memory": len(represented),
            "evicted_by_policy": dropped,
            "lost_increments": len(set(accepted) - in_state - represented) - dropped,
            "memory_block_tokens": len(eng.ledger.memory.token_ids)}


def _make(be, args, mode: str):
    from csr_ros.core.runtime.engine import CsrEngine
    from csr_ros.core.state.entity_memory import EntityMemory
    from csr_ros.core.reconcile.reconciler import Reconciler

    rec = Reconciler(be, policy=args.policy, evict_frac=args.evict_frac,
                     threads=args.rebuild_threads, chunk_tokens=args.chunk_tokens,
                     yield_to_hot_path=args.hot_threads >= 0, hot_path_threads=max(0, args.hot_threads))
    eng = CsrEngine(be, budget_tokens=args.budget, high_water_frac=args.high_water, evict_frac=args.evict_frac,
                    compactor=rec.compactor, memory=EntityMemory())
    return eng, (rec if mode == "asr" else None)


def _warm_up(eng, rec, accepted: list[int], step_ns: int) -> int:
    """Fill the state to just under the high-water mark and warm the kernels (untimed)."""
    k = 0
    while True:
        src, text, facts = observation(k, k * step_ns)
        inc = eng.make_increment(src, k * step_ns, text, facts)
        if eng.ledger.num_tokens + inc.num_tokens >= eng.high_water_tokens:
            break
        eng.accept(inc)
        accepted.append(inc.seq)
        eng.flush() if k % 2 else eng.query(QUESTION, max_new_tokens=1)
        k += 1
    return k


def _arrive(eng, rec, accepted: list[int], k: int, args) -> None:
    """The k-th increment of the stream is accepted (and notified to the reconciler)."""
    stamp = k * int(S / args.increment_hz)
    src, text, facts = observation(k, stamp)
    inc = eng.submit(src, stamp, text, facts)
    accepted.append(inc.seq)
    if rec is not None:
        rec.notify(inc)


def _swap(eng, rec, res: ModeResult, t_start: float) -> None:
    """ASR at a frame boundary: swap a ready state in (recorded), else request one."""
    from csr_ros.core.reconcile.reconciler import reconcile_at_frame

    if reconcile_at_frame(eng, rec) == "swap":
        res.swaps.append(time.perf_counter() - t_start)
        res.rebuild_ms.append(rec.counters.last_rebuild_ms)
        res.rebuild_cpu_ms.append(rec.counters.last_rebuild_cpu_ms)


def run_mode(be, args, mode: str) -> ModeResult:
    """One mode's frame loop until ``args.cycles`` compactions were swapped in."""
    import torch

    from csr_ros.core.reconcile.reconciler import ReconcilerThread

    torch.set_num_threads(args.threads if mode == "asr" else _sync_threads(args))
    gpu_opts.enter_hot_stream(args, getattr(be, "device", "cpu"))  # CUDA: queries ahead of the rebuild
    eng, rec = _make(be, args, mode)
    res, accepted = ModeResult(mode), []
    k = _warm_up(eng, rec, accepted, int(S / args.increment_hz))
    every = max(1, round(args.increment_hz / args.query_hz))
    period = 1.0 / args.increment_hz
    worker = ReconcilerThread(rec).start() if rec else None
    gc.collect()
    gc.freeze()
    runner0 = _runner_stats(be)
    res.load_avg.append(os.getloadavg()[0])
    cpu_start = _cpu_busy_s()
    t_start = time.perf_counter()
    building_since = None
    frame = 0
    try:
        cycles, max_s = (args.cycles, args.max_s) if rec else (args.baseline_cycles or args.cycles,
                                                               args.baseline_max_s or args.max_s)
        while len(res.swaps) < cycles and time.perf_counter() - t_start < max_s:
            t_sched = t_start + frame * period
            delay = t_sched - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            is_query = frame % every == 0
            eager = getattr(args, "backend", "hf") == "openai"  # a server: increments warmed on arrival
            if rec is not None:
                if not eager:
                    _swap(eng, rec, res, t_start)
                building = rec.state == "building"
                if building and building_since is None:
                    building_since = time.perf_counter()
                elif not building and building_since is not None:
                    res.busy_s += time.perf_counter() - building_since
                    building_since = None
            elif is_query and eng.needs_compaction:
                t0 = time.perf_counter()
                eng.compact_now("high_water")
                res.rebuild_ms.append((time.perf_counter() - t0) * 1e3)
                res.swaps.append(time.perf_counter() - t_start)
            if not eager:
                _arrive(eng, rec, accepted, k + frame, args)
            if is_query:
                phase, busy0 = rec.phase if rec is not None else "", _cpu_busy_s()
                t_call, cpu0, ru0 = time.perf_counter(), time.thread_time(), _thread_rusage()
                r = eng.query(QUESTION, max_new_tokens=1)
                cpu_ms = (time.thread_time() - cpu0) * 1e3  # < call_ms: this thread was preempted
                faults, sys_ms = (b - a for a, b in zip(ru0, _thread_rusage()))
                busy, ours = (b - a for a, b in zip(busy0, _cpu_busy_s()))
                ttft_ms = (t_call - t_sched + r.ttft_s) * 1e3
                res.queries.append({"t_s": round(t_sched - t_start, 3), "ttft_ms": round(ttft_ms, 2),
                                    "call_ms": round(r.ttft_s * 1e3, 2), "cpu_ms": round(cpu_ms, 2),
                                    "state_tokens": r.state_tokens, "rebuild_phase": phase,
                                    "page_faults": faults, "sys_ms": round(sys_ms, 2),
                                    # CPU cores other processes used during the call (coarse: 10 ms ticks)
                                    "other_cores": round(max(0.0, busy - ours) / max(r.ttft_s, 1e-3), 2),
                                    "rebuilding": rec is not None and rec.state == "building"})
                usage = getattr(eng.kv, "last_usage", None)  # a server's own prompt accounting
                if usage is not None:
                    res.queries[-1].update(prompt_n=usage.evaluated, cache_n=usage.cached)
            elif args.flush_every_frame:
                eng.flush()
            if eager:  # the frame's increment arrives after its question and is warmed at once; a
                _arrive(eng, rec, accepted, k + frame, args)  # swap then happens at the frame's end,
                eng.flush()
                if rec is not None:
                    _swap(eng, rec, res, t_start)
                    eng.flush()  # and warms what the built state lacks, off the next query's path
            frame += 1
    finally:
        res.wall_s = time.perf_counter() - t_start
        res.load_avg.append(os.getloadavg()[0])
        busy, ours = (b - a for a, b in zip(cpu_start, _cpu_busy_s()))
        res.external_cores = max(0.0, busy - ours) / max(res.wall_s, 1e-9)
        if worker is not None:
            worker.stop()
        gc.unfreeze()
    eng.flush()
    assert eng.check_invariant()
    res.accounting = account(eng, accepted)
    hard_limit = eng.counters.sync_evictions - (0 if rec else len(res.swaps))  # sync mode: beyond its own
    res.counters = {"sync_fallbacks": hard_limit,
                    "rebuild_failures": rec.counters.failures if rec else 0,
                    "replayed": rec.counters.replayed if rec else 0,
                    "frames": frame, "final_version": eng.ledger.version,
                    # hot-path forwards of the timed loop per path (graph / explicit / declined = eager)
                    "runner_forwards": {k: v - runner0.get(k, 0) for k, v in _runner_stats(be).items()}}
    return res


def _runner_stats(be) -> dict:
    runner = getattr(be, "runner", None)
    return dict(runner.stats) if runner is not None else {}


def summarize(res: ModeResult, window_s: float = 1.0) -> dict:
    ms = [q["ttft_ms"] for q in res.queries]
    near = [q["ttft_ms"] for q in res.queries if any(abs(q["t_s"] - s) <= window_s for s in res.swaps)]
    during = [q["ttft_ms"] for q in res.queries if q["rebuilding"]]
    idle = [q["ttft_ms"] for q in res.queries if not q["rebuilding"]]
    all_ = _stats(ms)
    cpu = sorted(q["cpu_ms"] / max(q["call_ms"], 1e-9) for q in res.queries)
    out = {"cycles": len(res.swaps), "swaps": len(res.swaps), "queries": len(ms),
           "ttft_ms_p50": all_.get("p50"), "ttft_ms_p99": all_.get("p99"), "ttft_ms_max": all_.get("max"),
           "p99_over_p50": all_.get("p99_over_p50"), "max_over_p50": all_.get("max_over_p50"),
           "near_swap": _stats(near), "during_rebuild": _stats(during), "no_rebuild": _stats(idle),
           "rebuild_ms": _stats(res.rebuild_ms), "rebuild_cpu_ms": _stats(res.rebuild_cpu_ms), "rebuild_busy_frac": round(res.busy_s / max(res.wall_s, 1e-9), 3),
           "wall_s": round(res.wall_s, 1), "load_avg_1min": res.load_avg,
           "external_cpu_cores": round(res.external_cores, 3),  # other processes on this machine
           # CPU time / wall time of the query calls on the inference thread (1.0: never preempted)
           "query_cpu_over_wall": {"p50": round(cpu[len(cpu) // 2], 3), "min": round(cpu[0], 3)} if cpu else {}}
    out.update(res.accounting)
    out.update(res.counters)
    return out


def plot(results: list[ModeResult], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.2 * len(results)), squeeze=False)
    for ax, res in zip(axes[:, 0], results):
        t = [q["t_s"] for q in res.queries]
        ax.plot(t, [q["ttft_ms"] for q in res.queries], ".", ms=3, label="TTFT (from arrival)")
        for i, s in enumerate(res.swaps):
            ax.axvline(s, color="tab:red", alpha=0.25, lw=0.8, label="swap / sync eviction" if i == 0 else None)
        ax.set_title(f"{res.mode}: {len(res.swaps)} cycles")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("TTFT (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cycles", type=int, default=100, help="eviction cycles per mode")
    p.add_argument("--modes", default="asr,sync", help="comma-separated: asr, sync")
    add_model_args(p, device="cpu", shape_example="tiny")
    p.add_argument("--budget", type=int, default=1024, help="budget_tokens (hard limit)")
    p.add_argument("--high-water", type=float, default=0.6, help="high_water_frac")
    p.add_argument("--evict-frac", type=float, default=0.8)
    p.add_argument("--policy", default="entity_memory", choices=("drop_oldest", "entity_memory", "summary"))
    p.add_argument("--increment-hz", type=float, default=3.0)
    p.add_argument("--query-hz", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the inference thread (asr)")
    p.add_argument("--rebuild-threads", type=int, default=1, help="torch threads of the reconciler thread")
    p.add_argument("--sync-threads", type=int, default=0,
                   help="torch threads of the sync baseline (default: what an asr query gets: "
                        "max(--threads, --hot-threads))")
    p.add_argument("--hot-threads", type=int, default=0,
                   help="asr: a query pauses the rebuild at its next layer boundary and runs with this many "
                        "torch threads (csr_ros.core.reconcile.hot_path); 0: pause without more threads; -1: no pausing")
    p.add_argument("--ride-along", dest="flush_every_frame", action="store_false",
                   help="let increments ride along with the next query (default: each frame appends its own)")
    p.add_argument("--chunk-tokens", type=int, default=256, help="rebuild prefill chunk")
    p.add_argument("--max-s", type=float, default=600.0, help="time limit per mode, s")
    p.add_argument("--baseline-cycles", type=int, default=0, help="sync mode's cycles (0: --cycles)")
    p.add_argument("--baseline-max-s", type=float, default=0.0, help="sync mode's time limit, s (0: --max-s)")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--plot", default=None, help="write a PNG plot")
    add_server_args(p)  # --backend openai --url URL [--url2 URL]: two-server reconciliation
    gpu_opts.add_gpu_args(p)


def print_summary(name: str, s: dict) -> None:
    print(f"{name:>5}: cycles {s['cycles']:>4}  queries {s['queries']:>4}  TTFT p50 {s['ttft_ms_p50']} ms  "
          f"p99 {s['ttft_ms_p99']} ({s['p99_over_p50']}x)  max {s['ttft_ms_max']} ({s['max_over_p50']}x)  "
          f"rebuild p50 {s['rebuild_ms'].get('p50')} ms  lost {s['lost_increments']}  "
          f"sync fallbacks {s['sync_fallbacks']}  wall {s['wall_s']} s  "
          f"other processes {s['external_cpu_cores']} cores")


def _payload(be, args, modes: dict, results: list[ModeResult], wall_s: float) -> dict:
    payload = {"model": be.name, "device": device_name(be.device), "dtype": args.dtype, "budget_tokens": args.budget,
               "high_water_frac": args.high_water, "evict_frac": args.evict_frac, "policy": args.policy,
               "increment_hz": args.increment_hz, "query_hz": args.query_hz, "question": QUESTION,
               "threads": {"asr_inference": args.threads, "asr_rebuild": args.rebuild_threads,
                           "asr_query_hot": args.hot_threads,
                           "sync": _sync_threads(args)},
               "scheduling": _scheduling(),
               "hot_path_gate": _gate_report(be), "gpu": gpu_opts.report(args, be),
               "modes": modes, "wall_s": round(wall_s, 1),
               "samples": {r.mode: {"queries": r.queries, "swaps_s": [round(s, 3) for s in r.swaps]} for r in results}}
    if hasattr(be, "report"):  # serving engines: lanes, promotions, prompt tokens evaluated vs cached
        payload.update(backend="openai", device=f"{be.pool.dialect.name} servers", server=be.report())
    return payload


def run(args) -> dict:
    logging.getLogger("csr_ros").setLevel(logging.ERROR)  # sync evictions are counted, not logged
    if getattr(args, "backend", "hf") == "openai":
        from csr_ros.cli.bench.ttft_server import load_backend

        be = load_backend(args)
    else:
        be = gpu_opts.load_backend(args)
    t0 = time.perf_counter()
    results, modes, payload = [], {}, {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in ("asr", "sync"):
            raise SystemExit(f"unknown mode {mode!r} (asr, sync)")
        results.append(run_mode(be, args, mode))
        modes[mode] = summarize(results[-1])
        print_summary(mode, modes[mode])
        payload = _payload(be, args, modes, results, time.perf_counter() - t0)
        write_json(args.json, payload)  # after every mode: a run cut short keeps the finished ones
    if args.plot:
        plot(results, args.plot, f"TTFT through eviction cycles: {be.name}, budget {args.budget} tokens, "
                                 f"{args.policy}")
    return payload
