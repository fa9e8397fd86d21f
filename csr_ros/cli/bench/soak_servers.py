"""The serving engines of ``csr-ros bench soak --backend openai``: two llama.cpp servers on
loopback (the embedded GGUF, one slot and one thread each), each killed with SIGKILL and
restarted - a new process on the same port, empty prefix cache - twice on a schedule, and the
figures that say whether the graph noticed: the time-to-first-token of every question, the
first query after each restart against the p50 of the warm ones (the re-warm happened off the
hot path when it is within 2x).
"""

from __future__ import annotations

import signal
import statistics
import time

from csr_ros.core.model.backends.llama_server import LlamaServer

DOWN_S = 10.0
"""How long a killed server stays down before its restart, seconds."""
SETTLE_S = 30.0
"""Questions asked this long after a restart or while a server is down are not 'warm' ones."""


class ServerFarm:
    """Two llama-servers and their kill/restart plan (``step`` runs what is due, main thread)."""

    def __init__(self, ctx_tokens: int = 4096, threads: int = 1):
        self.ctx_tokens, self.threads = ctx_tokens, threads
        self.servers = [self._start(None)]
        try:
            self.servers.append(self._start(None))
        except Exception:
            self.close()
            raise
        self.ports = [int(s.url.rsplit(":", 1)[1]) for s in self.servers]
        self.plan: list[tuple[float, int, str]] = []
        self.events: list[dict] = []  # {"server", "kill_s", "back_s", "restart_took_s"} (monotonic)

    def _start(self, port: int | None) -> LlamaServer:
        return LlamaServer.start(ctx_tokens=self.ctx_tokens, parallel=1, threads=self.threads, port=port)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def schedule(self, t0: float, duration_s: float) -> None:
        """Server 0 at 15 % and 55 % of the run, server 1 at 35 % and 75 %; each back DOWN_S later."""
        for frac, idx in ((0.15, 0), (0.35, 1), (0.55, 0), (0.75, 1)):
            t = t0 + frac * duration_s
            self.plan += [(t, idx, "kill"), (t + DOWN_S, idx, "restart")]
        self.plan.sort()

    def step(self, now: float) -> str:
        """Run the due kill or restart (at most one); a note for the soak's log, or ''."""
        if not self.plan or now < self.plan[0][0]:
            return ""
        _, idx, what = self.plan.pop(0)
        srv = self.servers[idx]
        if what == "kill":
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait()
            self.events.append({"server": idx, "kill_s": time.monotonic()})
            return f"server {idx} ({srv.url}) killed"
        t = time.monotonic()
        self.servers[idx] = self._start(self.ports[idx])
        ev = self.events[-1] if self.events and self.events[-1]["server"] == idx else {"server": idx}
        ev.update(back_s=time.monotonic(), restart_took_s=round(time.monotonic() - t, 2))
        return f"server {idx} restarted (empty cache) in {ev['restart_took_s']} s"

    def close(self) -> None:
        for s in self.servers:
            s.stop()


def ttft_figures(asked: dict[str, float], first_piece: dict[str, float], finals: dict[str, str],
                 events: list[dict]) -> dict:
    """TTFT (ask -> first piece of the answer) of the single questions; the first answered one
    asked after each restart against the p50 of the warm ones (asked while both servers were up
    and not within SETTLE_S after a restart)."""
    ttft = {rid: first_piece[rid] - t for rid, t in asked.items()
            if rid in first_piece and not finals.get(rid, "").startswith(("refused:", "error:"))}
    windows = [(e["kill_s"], e.get("back_s", float("inf")) + SETTLE_S) for e in events if "kill_s" in e]
    warm = [v for rid, v in ttft.items() if not any(a <= asked[rid] <= b for a, b in windows)]
    p50 = statistics.median(warm) if warm else None
    firsts = []
    for e in events:
        after = sorted((asked[rid], rid) for rid in ttft if asked[rid] >= e.get("back_s", float("inf")))
        if after:
            rid = after[0][1]
            firsts.append({"server": e["server"], "asked_after_restart_s": round(asked[rid] - e["back_s"], 2),
                           "ttft_ms": round(ttft[rid] * 1e3, 1)})
    refused = sum(1 for rid in asked if finals.get(rid, "").startswith("refused:"))
    within = [f["ttft_ms"] <= 2 * p50 * 1e3 for f in firsts] if p50 else []
    return {"questions_timed": len(ttft), "warm_queries": len(warm),
            "warm_ttft_p50_ms": round(p50 * 1e3, 1) if p50 else None,
            "warm_ttft_p90_ms": round(statistics.quantiles(warm, n=10)[-1] * 1e3, 1) if len(warm) >= 10 else None,
            "first_query_after_restart": firsts, "questions_refused_while_away": refused,
            "first_after_restart_within_2x_p50": bool(within) and all(within) and len(firsts) == len(events)}
