"""``csr-ros bench soak --minutes N``: the real graph under mixed load with injected faults.

The graph runs as its own process (:mod:`csr_ros.cli.bench.soak_child`: ``csr-ros run`` plus faults
at scheduled times) on a private ROS domain over loopback; this process drives it
(:mod:`csr_ros.cli.bench.soak_load`: perception, one 10x burst, malformed messages, questions with
bursts beyond ``language.max_open_requests``, bad request ids, huge instructions), SIGTERMs and
SIGKILLs it once each and restarts it from its on-disk ledger, samples its resident memory every
second, and writes JSON::

    {"minutes", "messages_in", "messages_rejected", "faults_injected",
     "action_gaps_over_2_periods", "increments_lost", "max_rss_mb", "rss_mb_per_minute", ...}

The model: ``--backend fake`` by default (everything else is the real graph: nodes, executors,
scheduler, reconciler, ledger, DDS). ``--backend hf`` runs the embedded SmolLM2 on the CPU; on a
2-core machine its compaction rebuilds (seconds per state) fall behind, synchronous evictions of
3-7 s follow and the action stream has gaps, so it is not the default there; the JSON's
``model`` says which ran.

``action_gaps_over_2_periods`` counts gaps between published ActionChunks (publication stamps)
longer than two control periods, outside the windows from a kill signal to the first chunk of
the restarted process. ``increments_lost`` counts increments the graph announced on
``csr/increments`` that are not in the on-disk ledger at the end, or not accounted for by the
restored state (retained, or represented by its memory block). ``rss_flat``: the last minute's
max RSS within 10 % of the second minute's (null for runs shorter than 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from csr_ros.cli.bench.common import write_json
from csr_ros.share import child_env, shipped

DEFAULT_PARAMS = "config/csr.yaml"  # under the installed share/csr_ros
READY_TIMEOUT_S = 180.0
CONFIGURED_RATES_HZ = {"fake": {"joints": 10.0, "pose": 5.0, "camera": 2.0, "observations": 10.0},
                       "hf": {"joints": 2.0, "pose": 1.0, "camera": 0.5, "observations": 2.0},
                       "openai": {"joints": 2.0, "pose": 1.0, "camera": 0.5, "observations": 2.0}}
"""inputs.<name>.min_period_s = 1 / rate: the configured rates the load exceeds (the input gate
drops what comes sooner, counted as throttled; the per-topic queue bounds the rest). The model
on a 2-core CPU gets the rates its appends and rebuilds can follow."""


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=10.0, help="soak duration, minutes")
    p.add_argument("--backend", choices=["fake", "hf", "openai"], default="fake",
                   help="fake (default): the deterministic fake backend, 5 ms per forward; hf: the embedded "
                        "SmolLM2 on the CPU (on a 2-core machine its rebuilds cannot keep up: see the README); "
                        "openai: two llama.cpp servers on loopback (scripts/build_llama_server.sh), each killed "
                        "and restarted twice (the graph itself is not killed then)")
    p.add_argument("--params-file", default="", help="base ROS 2 parameters file (default: the installed "
                   f"share/csr_ros/{DEFAULT_PARAMS})")
    p.add_argument("--budget-tokens", type=int, default=0,
                   help="state budget, tokens (small, so compactions happen; 0: 2048 for hf, 4096 for the fake's byte tokens)")
    p.add_argument("--no-kills", action="store_true", help="no SIGTERM/SIGKILL restarts")
    p.add_argument("--domain-id", type=int, default=0, help="ROS_DOMAIN_ID (0: derived from the pid)")
    p.add_argument("--out", default="out/soak.json", help="JSON output path")


def _overrides(args, ledger_dir: Path, urls: list[str] = ()) -> list[str]:
    o = {"model.backend": args.backend, "ledger.dir": str(ledger_dir), "ledger.fsync": "batch",
         "budget.budget_tokens": args.budget_tokens, "reconciler.threads": 1,
         "ros.reject_log_throttle_s": 5.0, "control.control_rate_hz": 10.0,
         **{f"inputs.{name}.min_period_s": 1.0 / hz for name, hz in CONFIGURED_RATES_HZ[args.backend].items()}}
    if args.backend == "hf":
        o.update({"model.device": "cpu", "model.torch_threads": 1})
    elif args.backend == "openai":  # a dead server is found within a query; its /health every 0.25 s
        o.update({"server.dialect": "llamacpp", "server.query_timeout_s": 5.0, "server.score_timeout_s": 2.0,
                  "server.health_period_s": 0.25})
    else:
        o["fake.delay_s"] = 0.005
    if urls:
        o["server.urls"] = "[" + ",".join(f"'{u}'" for u in urls) + "]"
    return [x for k, v in o.items()
            for x in ("-p", f"{k}:={json.dumps(v) if isinstance(v, str) and k != 'server.urls' else v}")]


def schedule(t0: float, duration_s: float, kills: bool) -> tuple[dict, list[tuple[float, str]]]:
    """Fault instants (wall clock) per kind, and the kill plan [(t, "SIGTERM"|"SIGKILL")].
    Faults are spread over the run, one of each kind per ~2.5 minutes (at least two)."""
    n = max(2, round(duration_s / 150.0))
    faults = {kind: [t0 + duration_s * (k + 0.2 + 0.25 * i) / n for k in range(n)]
              for i, kind in enumerate(("decode", "oom", "reconciler"))}
    plan = [(t0 + 0.45 * duration_s, "SIGTERM"), (t0 + 0.75 * duration_s, "SIGKILL")] if kills else []
    return faults, plan


class GraphProcess:
    """One life of the graph process at a time; samples its RSS."""

    def __init__(self, cmd: list[str], env: dict, log_path: Path):
        self.cmd, self.env, self.log_path = cmd, env, log_path
        self.proc: subprocess.Popen | None = None
        self.exit_codes: list[int] = []

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.cmd, cwd=self.log_path.parent, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self, sig: int, timeout_s: float = 60.0) -> int:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.exit_codes.append(rc)
        return rc

    def rss_mb(self) -> float | None:
        import psutil

        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except (psutil.Error, AttributeError):
            return None


def _model_name(backend: str) -> str:
    return {"hf": "SmolLM2-135M-Instruct (embedded, model.backend hf, CPU)",
            "openai": "SmolLM2-135M-Instruct GGUF on two llama.cpp servers (model.backend openai, CPU)"}.get(
        backend, "fake backend")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.context import Context

    from csr_ros.cli.bench import soak_load as load

    duration_s = args.minutes * 60.0
    args.budget_tokens = args.budget_tokens or (4096 if args.backend == "fake" else 2048)
    farm = None
    if args.backend == "openai":
        from csr_ros.cli.bench.soak_servers import ServerFarm

        farm, args.no_kills = ServerFarm(ctx_tokens=args.budget_tokens + 1024), True
    work = Path(tempfile.mkdtemp(prefix="csr_soak_"))
    domain = args.domain_id or os.getpid() % 100 + 101
    env = child_env(PYTHONUNBUFFERED="1", ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    args.params_file = args.params_file or str(shipped(DEFAULT_PARAMS))
    os.environ.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    cmd = [sys.executable, "-m", "csr_ros.cli.bench.soak_child", str(work / "faults_spec.json"), "--ros-args",
           "--params-file", args.params_file, *_overrides(args, work / "ledger", farm.urls if farm else [])]
    graph = GraphProcess(cmd, env, work / "graph.log")
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    driver = load.Driver(ctx, rate_hz=10.0)
    try:
        result = _soak(args, graph, driver, work, duration_s, farm)
    finally:
        if graph.proc is not None and graph.proc.poll() is None:
            graph.stop(signal.SIGTERM)
        driver.close()
        ctx.try_shutdown()
        if farm is not None:
            farm.close()
    result.update(_accounting(work, driver), faults_injected_by_kind=_faults(work, graph))
    result["faults_injected"] = sum(result["faults_injected_by_kind"].values())
    result["exit_codes"] = graph.exit_codes
    result["checks"] = _checks(result)
    result["work_dir"] = str(work)
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("minutes", "messages_in", "messages_rejected", "faults_injected",
                                              "action_gaps_over_2_periods", "increments_lost", "max_rss_mb",
                                              "rss_flat", "checks")}, indent=1))
    return 0


def _soak(args, graph: GraphProcess, driver, work: Path, duration_s: float, farm=None) -> dict:
    from csr_ros.cli.bench import soak_load as load

    """The load loop: start, drive, kill/restart as planned, sample RSS; returns the measures.
    The run's clock (faults, kills, minutes) starts when the first ActionChunk arrives."""
    rss: list[tuple[float, float, int]] = []  # (s since t0, MB, pid of that life)
    excluded: list[list[float]] = []  # [start, end] monotonic windows of kills and restarts
    t_launch = time.monotonic()
    graph.start()
    driver.wait_for_chunks(READY_TIMEOUT_S, graph)
    ready_s = time.monotonic() - t_launch
    t0 = time.time()
    faults, kill_plan = schedule(t0, duration_s, not args.no_kills)
    (work / "faults_spec.json").write_text(json.dumps({"faults_file": str(work / "faults.jsonl"), **faults}))
    t_start, next_rss = time.monotonic(), 0.0
    if farm is not None:
        farm.schedule(t_start, duration_s)
    plan = list(kill_plan)
    while time.time() < t0 + duration_s:
        if plan and time.time() >= plan[0][0]:
            _, how = plan.pop(0)
            window = [time.monotonic(), 0.0]
            rc = graph.stop(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
            driver.note(f"{how}: exit code {rc}")
            graph.start()
            driver.wait_for_chunks(READY_TIMEOUT_S, graph)
            window[1] = time.monotonic()
            excluded.append(window)
        note = farm.step(time.monotonic()) if farm is not None else ""
        if note:
            driver.note(f"{time.monotonic() - t_start:.1f} s: {note}")
        elapsed = time.monotonic() - t_start
        driver.tick(elapsed, duration_s)
        if elapsed >= next_rss:
            mb = graph.rss_mb()
            if mb is not None:
                rss.append((elapsed, mb, graph.proc.pid))
            next_rss += 1.0
    rc = graph.stop(signal.SIGTERM)
    driver.note(f"final SIGTERM: exit code {rc}")
    gaps = driver.gaps(excluded)
    per_minute = [max((mb for t, mb, _ in rss if m * 60 <= t < (m + 1) * 60), default=None)
                  for m in range(int(-(-(time.monotonic() - t_start) // 60)))]
    per_minute = [round(x, 1) for x in per_minute if x is not None]
    flat = None
    if len(per_minute) >= 3:
        flat = abs(per_minute[-1] - per_minute[1]) <= 0.10 * per_minute[1]
    return {
        "minutes": args.minutes, "model": _model_name(args.backend), "backend": args.backend,
        "device": "cpu", "cpu_cores": os.cpu_count(), "control_rate_hz": 10.0,
        "budget_tokens": args.budget_tokens, "configured_rates_hz": CONFIGURED_RATES_HZ[args.backend],
        "burst_10x_window_s": [round(x, 1) for x in load.burst_window_s(duration_s)],
        "startup_s": round(ready_s, 1),
        **driver.counts(), **gaps,
        "kills": [how for _, how in kill_plan], "restarts": len(excluded),
        "excluded_windows_s": [round(b - a, 1) for a, b in excluded],
        "max_rss_mb": round(max((mb for _, mb, _ in rss), default=0.0), 1),
        "rss_mb_per_minute": per_minute, "rss_flat": flat, "rss_mb_per_life": _per_life(rss),
        "notes": driver.notes, **(_server_figures(driver, farm, t_start) if farm is not None else {}),
    }


def _server_figures(driver, farm, t_start: float) -> dict:
    from csr_ros.cli.bench.soak_servers import ttft_figures

    events = [{k: (round(v - t_start, 2) if k.endswith("_s") and k != "restart_took_s" else v) for k, v in e.items()}
              for e in farm.events]
    return {"server_events_s": events, "server_kills": len(farm.events),
            **ttft_figures(*driver.question_times(), farm.events)}


def _per_life(rss: list[tuple[float, float, int]]) -> list[dict]:
    """RSS of each process life: when it started (s), its first and last sample and its max (MB)
    (a restarted process restores the ledger, so lives are compared each with itself)."""
    lives: dict[int, list[tuple[float, float]]] = {}
    for t, mb, pid in rss:
        lives.setdefault(pid, []).append((t, mb))
    return [{"start_s": round(s[0][0], 1), "first_mb": round(s[0][1], 1), "last_mb": round(s[-1][1], 1),
             "max_mb": round(max(mb for _, mb in s), 1)} for s in lives.values()]


def _faults(work: Path, graph: GraphProcess) -> dict[str, int]:
    out = {"decode": 0, "oom": 0, "reconciler": 0}
    path = work / "faults.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                out[json.loads(line)["kind"]] += 1
    out["sigterm"] = sum(1 for rc in graph.exit_codes[:-1] if rc == 0)
    out["sigkill"] = sum(1 for rc in graph.exit_codes if rc == -signal.SIGKILL)
    return out


def _accounting(work: Path, driver) -> dict:
    """Increments announced on csr/increments vs the on-disk ledger and its restored state."""
    from csr_ros.core.state.ledger_store import FILE_NAME, read_records, restore

    records, _, torn = read_records(work / "ledger" / FILE_NAME)
    on_disk = {int(r["seq"]) for r in records if r.get("t") == "inc"}
    restored = restore(work / "ledger")
    in_state = {i.seq for i in restored.ledger.increments} if restored else set()
    covers = restored.ledger.memory.covers_through_seq if restored else -1
    announced = driver.announced_seqs()
    unaccounted = {s for s in on_disk if s not in in_state and s > covers}
    return {"increments_announced": len(announced), "increments_on_disk": len(on_disk),
            "increments_lost": len(announced - on_disk) + len(unaccounted),
            "ledger_torn_bytes": torn, "ledger_compactions": restored.compactions if restored else 0}


def _checks(r: dict) -> dict[str, bool | None]:
    extra = {}
    if r.get("backend") == "openai":
        extra = {"each_server_killed_twice": r["server_kills"] == 4,
                 "first_after_restart_within_2x_p50": r["first_after_restart_within_2x_p50"]}
    return {**extra, "increments_lost==0": r["increments_lost"] == 0,
            "action_gaps_over_2_periods==0": r["action_gaps_over_2_periods"] == 0,
            "rss_flat": r["rss_flat"],
            "clean_exits": all(rc in (0, -signal.SIGKILL) for rc in r["exit_codes"]),
            "faults_injected>0": r["faults_injected"] > 0}
