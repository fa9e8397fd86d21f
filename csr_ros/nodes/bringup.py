"""Bringup: THE one place that declares the executors, callback groups, threads, lifecycle
bring-up and shutdown order of the csr_ros graph. Used by the ``csr_node`` executable
(:func:`main`, launch files), by ``csr-ros run`` (:func:`run`) and by ``csr-ros demo``.

One process, one private rclpy Context, three nodes (two of them share the model and its KV memory)::

  thread                       runs                                       touches the model?
  ---------------------------  -----------------------------------------  ------------------
  main                         start-up, lifecycle bring-up (autostart:   configure loads it
                               configure + activate), waits for
                               SIGINT/SIGTERM, then the ordered shutdown
  csr-action-executor          SingleThreadedExecutor with node           no
                               `csr_actions`: action timer ->
                               chunk_for_publish (never waits on the model,
                               never queues behind inputs); the process's
                               only /clock subscription (sim_clock.py)
  csr-inference-executor       MultiThreadedExecutor(ros.executor_threads no (configure, when
                               + ASK_GOAL_THREADS) with the lifecycle      a lifecycle manager
                               node `csr` and its callback groups:         calls it, loads it)
      default    (MutuallyExclusive)  lifecycle services (change_state: configure loads the model)
      perception (MutuallyExclusive)  perception subscriptions -> submit_increment
      requests   (MutuallyExclusive)  csr/ask, csr/instruction -> ask / set_instruction
      status     (MutuallyExclusive)  status timer -> status()
      answers    (Reentrant)          Ask action: goal/cancel callbacks; one execute callback per
                                      open goal waits for its answer pieces (threads are made
                                      on demand, up to ASK_GOAL_THREADS extra)
      management (MutuallyExclusive)  services: queue a worker call, wait for its result
    The groups may run in parallel with each other; within a MutuallyExclusive group, callbacks
    are serial (so a serializer's change detection never races with itself).
  csr-model-worker             InferenceNode.run_worker: run_frame() and  yes (inference side)
                               the worker calls once per control period
                               (idle while `csr` is unconfigured)
  csr-reconciler-executor      SingleThreadedExecutor with node           yes (builds in a fresh
                               `csr_reconciler`: timer -> run_once()      KV state; own torch threads)

Lifecycle: `csr` is a managed node; `csr_actions` and `csr_reconciler` follow it (bound at its
configure, unbound at its cleanup; the action clock publishes only what the scheduler hands out:
nothing while inactive but the one hold chunk at deactivation). ``ros.autostart`` (default
true) configures and activates `csr` at start; false leaves it unconfigured for an external
manager (``ros2 lifecycle set /csr configure``).

Shutdown order (on SIGINT/SIGTERM, or when a thread dies): (1) set the stop event: the worker
finishes its current frame, a running build is cancelled at its next chunk; (2) join the model
worker; (3) shut the reconciler executor down and join its thread; (4) shut the inference
executor down (inputs stop after the model is quiet) and join it; (5) shut the action executor
down last (the action clock publishes until the end; no chunk outlives its ``valid_until``) and
join it; (6) the lifecycle shutdown transition of `csr` from whatever state it is in: followers
unbound, the on-disk ledger flushed and closed (a final fsync), the model freed; (7) destroy
the nodes (reconciler first); (8) shut the context down. Exit code 0 on a clean stop, 2 on a
bad parameter (configure failed on it), 1 on any other failure.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

from csr_ros.core.config import ConfigError, CsrConfig, param_table
from csr_ros.core.model.device import set_thread_budget
from csr_ros.core.model.streams import use_hot_stream
from csr_ros.nodes.action_node import ActionNode
from csr_ros.nodes.inference_node import InferenceGroups, InferenceNode
from csr_ros.nodes.parameters import with_default_params_file
from csr_ros.nodes.reconciler_node import ReconcilerNode
from csr_ros.nodes.sim_clock import on_jump_back, share_clock
from csr_ros.share import ShareNotFound

JOIN_TIMEOUT_S = 30.0
ASK_GOAL_THREADS = next(int(s.validation["bounds<>"][1]) for s in param_table()
                        if s.key == "language.max_open_requests")
"""Extra inference-executor threads for the Ask action's execute callbacks (one per open goal,
at most ``language.max_open_requests``'s upper bound; the pool makes them on demand)."""
JUMP_CALLBACK_MIN_BACK_NS = 1_000_000  # /clock going back by more than this reaches the scheduler at once
GIL_SWITCH_INTERVAL_S = 0.001
"""How long a Python thread may hold the interpreter lock while another waits (CPython's default
is 5 ms). The graph runs several Python threads (executors, model worker, reconciler); under an
input storm every lock hand-off of the action clock's timer callback can wait a full interval
per runnable thread, which added up to 0.3-0.4 s gaps in the action stream in the soak (10x
perception on 2 cores). 1 ms makes those hand-offs 5x shorter (set once, process-wide)."""


# ------------------------------------------------------------------------------ the core
def build_backend(cfg: CsrConfig):
    """The model backend named by ``model.backend`` (hf: ``model.model``; fake; openai: ``server.*``)."""
    m = cfg.model
    if m.backend == "fake":
        from csr_ros.core.model.backends.fake import FakeBackend

        return FakeBackend(delay_s=cfg.fake.delay_s)
    if m.backend == "hf":
        from csr_ros.core.model.backends import hf

        if m.model.startswith("shape:"):
            return hf.load_shape(m.model.split(":", 1)[1], m.device, m.dtype, m.attention, cuda_graphs=m.cuda_graphs)
        return hf.load_hf(m.model, m.device, m.dtype, m.attention, m.trust_remote_code, cuda_graphs=m.cuda_graphs)
    if m.backend == "openai":  # a serving engine (vLLM, SGLang, llama.cpp): the server.* parameters
        from csr_ros.core.model.backends import openai

        return openai.from_config(cfg)
    raise ConfigError(f"parameter model.backend: {m.backend!r} is not a known backend")


@dataclass
class Core:
    """What the nodes drive: the scheduler, and the reconciler (None when disabled)."""

    scheduler: object
    reconciler: object | None
    close: Callable[[], None]


def build_core(cfg: CsrConfig, clock_ns: Callable[[], int]) -> Core:
    """Backend, action registry, compactor, on-disk ledger, engine, reconciler and scheduler from
    the validated config. ``clock_ns`` (the node's ROS clock) stamps chunks and increments; the
    reconciler's retry back-off runs on the monotonic clock (it must not stop with a paused
    simulated clock)."""
    from csr_ros.core.runtime.actions import ActionRegistry, resolve_config_file
    from csr_ros.core.state.compaction import Compactor
    from csr_ros.core.runtime.engine import CsrEngine
    from csr_ros.core.state.entity_memory import EntityMemory
    from csr_ros.core.state.ledger_store import LedgerStore
    from csr_ros.core.runtime.policy import system_prompt_with_actions
    from csr_ros.core.reconcile.reconciler import ModelSummarizer, Reconciler
    from csr_ros.core.runtime.scheduler import FrameScheduler

    backend = build_backend(cfg)
    b, c, r, led = cfg.budget, cfg.control, cfg.reconciler, cfg.ledger
    registry = ActionRegistry.load(resolve_config_file(c.actions_file, "actions.yaml"), c.horizon_steps, c.dt_s)
    system = cfg.model.system_prompt
    if c.policy == "registry":  # the entries' descriptions live in the cached prefix (read once)
        system = system_prompt_with_actions(system, registry)
    summarizer = ModelSummarizer(backend) if r.policy == "summary" else None
    compactor = Compactor(r.policy, b.evict_frac, backend.template, backend.encode, summarizer)
    store = (LedgerStore(led.dir, led.fsync, led.batch_period_s, backlog_max_records=led.backlog_max_records,
                         retry_period_s=led.retry_period_s) if led.dir else None)
    engine = CsrEngine(backend, b.budget_tokens, b.high_water_frac, b.evict_frac, system, clock_ns,
                       compactor=compactor, store=store,
                       memory=EntityMemory() if cfg.memory.focus_enabled or cfg.memory.answer_context == "memory"
                       else None)
    reconciler = None
    if r.enabled:
        reconciler = Reconciler(backend, r.policy, b.evict_frac, r.threads, time.monotonic_ns,
                                compactor=compactor, retry_backoff_s=r.retry_backoff_s,
                                max_backoff_s=r.max_backoff_s, device=r.device,
                                yield_to_hot_path=r.yield_to_hot_path, hot_path_threads=r.hot_path_threads)
    scheduler = FrameScheduler(engine, None, cfg, clock_ns, reconciler, registry=registry,
                               prompt_ids=_answer_prompts(cfg, engine))
    return Core(scheduler, reconciler, store.close if store is not None else (lambda: None))


def _answer_prompts(cfg: CsrConfig, engine) -> Callable[..., object]:
    """``(question, context=None)`` -> the answer prompt: ``context`` ("state" | "memory"; None:
    ``memory.answer_context``, with focus lines: :class:`csr_ros.core.runtime.answer.AnswerContexts`,
    entity names matched exactly and normalised, no embeddings). With focus off and the state
    context, the state context is the scheduler's plain query after the state."""
    from csr_ros.core.runtime.answer import AnswerContexts

    m, lead_in = cfg.memory, cfg.language.lead_in
    contexts = AnswerContexts(m)
    plain = not m.focus_enabled and m.answer_context == "state"

    def prompt(question: str, context: str | None = None):
        if plain and context in (None, "", "state"):
            return engine.query_ids(question, lead_in)
        return contexts.build(engine, question, lead_in, context or None)
    return prompt


# ------------------------------------------------------------------------------ logging
class _RosLogHandler(logging.Handler):
    """Python ``logging`` of the core (csr_ros.*) -> the node's rclpy logger (and /rosout)."""

    def __init__(self, logger):
        super().__init__()
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = f"[{record.name}] {record.getMessage()}"
            if record.levelno >= logging.ERROR:
                self._logger.error(msg)
            elif record.levelno >= logging.WARNING:
                self._logger.warning(msg)
            elif record.levelno >= logging.INFO:
                self._logger.info(msg)
            else:
                self._logger.debug(msg)
        except Exception:  # noqa: BLE001 - logging must never raise
            pass


# ------------------------------------------------------------------------------ the graph
class Graph:
    """The three nodes, their executors and threads; :meth:`bring_up` runs the lifecycle
    transitions, :meth:`shutdown` the documented order."""

    def __init__(self, context: Context, stop: threading.Event):
        self.context, self.stop = context, stop
        self.failed = False  # a thread died: exit code 1
        groups = InferenceGroups(perception=MutuallyExclusiveCallbackGroup(),
                                 requests=MutuallyExclusiveCallbackGroup(),
                                 status=MutuallyExclusiveCallbackGroup(),
                                 answers=ReentrantCallbackGroup(),
                                 management=MutuallyExclusiveCallbackGroup())
        self.node = InferenceNode(context, build_core=build_core, groups=groups)  # declares its parameters
        threads = int(self.node.get_parameter("ros.executor_threads").value)
        self.inference_executor = MultiThreadedExecutor(num_threads=threads + ASK_GOAL_THREADS, context=context)
        self.inference_executor.add_node(self.node)
        self.action_node = ActionNode(context, use_sim_time=self.node.use_sim_time)
        self.reconciler_node = ReconcilerNode(context, None, 1.0, self.stop, MutuallyExclusiveCallbackGroup(),
                                              self.node.use_sim_time)
        self.node.followers += [self.action_node, self.reconciler_node]
        self.node.time_followers.append(self.action_node)
        self.action_executor = SingleThreadedExecutor(context=context)
        self.action_executor.add_node(self.action_node)
        self.reconciler_executor = SingleThreadedExecutor(context=context)
        self.reconciler_executor.add_node(self.reconciler_node)
        # one /clock subscription (the action clock's executor) sets every clock (sim_clock.py); a
        # jump back of it reaches the scheduler of the moment (its Timeline decides what counts)
        share_clock(self.action_node, self.node, self.reconciler_node)
        self._jump_handle = on_jump_back(self.node, JUMP_CALLBACK_MIN_BACK_NS, self._clock_jumped)
        self.threads = {
            "csr-action-executor": threading.Thread(target=self._spin, args=(self.action_executor,)),
            "csr-inference-executor": threading.Thread(target=self._spin, args=(self.inference_executor,)),
            "csr-model-worker": threading.Thread(target=self._guard, args=(self._model_worker,)),
            "csr-reconciler-executor": threading.Thread(target=self._spin, args=(self.reconciler_executor,)),
        }
        for name, t in self.threads.items():
            t.name, t.daemon = name, True

    def _clock_jumped(self) -> None:
        sched = self.node.scheduler  # None while unconfigured
        if sched is not None:
            sched.check_clock()

    def bring_up(self) -> int:
        """configure + activate `csr` (autostart). 0 when active; 2 when configure failed on a
        parameter (the message names it); 1 on any other failure (logged)."""
        from rclpy.lifecycle import TransitionCallbackReturn as R

        node = self.node
        if node.trigger_configure() != R.SUCCESS:
            print(f"csr_node: configure failed: {node.last_error}", file=sys.stderr)
            return 2 if node.last_error.startswith(("parameter ", "unknown parameter")) else 1
        if node.trigger_activate() != R.SUCCESS:
            print(f"csr_node: activate failed: {node.last_error}", file=sys.stderr)
            return 1
        return 0

    def _model_worker(self) -> None:
        threads = int(self.node.get_parameter("model.torch_threads").value)
        if self.node.get_parameter("model.backend").value == "hf":
            set_thread_budget(threads)  # this thread's own intra-op budget (0: torch's default)
            backend = getattr(getattr(getattr(self.node, "scheduler", None), "engine", None), "backend", None)
            use_hot_stream(getattr(backend, "device", "cpu"))  # CUDA: frames ahead of the rebuild's stream
        self.node.run_worker(self.stop)

    def _guard(self, fn, *args) -> None:
        """Thread body: any escape stops the whole graph (it is then shut down in order)."""
        try:
            fn(*args)
        except ExternalShutdownException:  # the context was shut down under the executor
            self.stop.set()
        except Exception as e:  # noqa: BLE001
            self.node.get_logger().fatal(f"{threading.current_thread().name} died: {type(e).__name__}: {e}")
            self.failed = True
            self.stop.set()

    def _spin(self, executor) -> None:
        self._guard(executor.spin)

    def start(self) -> None:
        for t in self.threads.values():
            t.start()

    def log_up(self) -> None:
        node = self.node
        backend = node.cfg.model.backend if node.cfg is not None else node.get_parameter("model.backend").value
        rate = f"{node.cfg.control.control_rate_hz:g} Hz actions, " if node.cfg is not None else ""
        node.get_logger().info(
            f"csr graph up: {len(node.inputs)} inputs, backend {backend}, {rate}lifecycle state "
            f"{node.lifecycle_state}, threads {', '.join(self.threads)}")

    def wait(self) -> None:
        """Block until stopped (signal handler, dead thread or :meth:`shutdown`)."""
        while not self.stop.wait(0.5):
            pass

    def shutdown(self) -> None:
        """The documented shutdown order (idempotent)."""
        self.stop.set()                                                            # (1)
        core = self.node.core
        if core is not None and core.reconciler is not None:
            core.reconciler.cancel()
        self._join("csr-model-worker")                                              # (2)
        self.reconciler_executor.shutdown(timeout_sec=JOIN_TIMEOUT_S)               # (3)
        self._join("csr-reconciler-executor")
        self.inference_executor.shutdown(timeout_sec=JOIN_TIMEOUT_S)                # (4)
        self._join("csr-inference-executor")
        self.action_executor.shutdown(timeout_sec=JOIN_TIMEOUT_S)                   # (5)
        self._join("csr-action-executor")
        if self.node.lifecycle_state in ("unconfigured", "inactive", "active"):    # (6)
            self.node.trigger_shutdown()
        self.node.teardown()  # a no-op after the transition; frees the core in any other state
        self.reconciler_node.destroy_node()                                         # (7)
        self.action_node.destroy_node()
        self.node.destroy_node()
        self.context.try_shutdown()                                                 # (8)

    def _join(self, name: str) -> None:
        t = self.threads.get(name)
        if t is not None and t.is_alive():
            t.join(JOIN_TIMEOUT_S)
            if t.is_alive():
                logging.getLogger("csr_ros.bringup").error("%s did not stop in %.0f s", name, JOIN_TIMEOUT_S)


def _install_signal_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set the stop event; the main thread then shuts down in order. A second
    signal gets the default action (kills a stuck shutdown). The private Context installs no
    rclpy signal handlers, so these are the only ones."""
    def handler(signum, _frame):
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run(ros_args: Sequence[str] = ()) -> int:
    """Start the graph with ROS arguments (``--ros-args --params-file F -p k:=v ...``; without a
    ``--params-file`` the installed ``share/csr_ros/config/csr.yaml``) and block until
    SIGINT/SIGTERM. Returns the process exit code."""
    try:
        ros_args = with_default_params_file(ros_args)
    except ShareNotFound as e:
        print(f"csr_node: {e}", file=sys.stderr)
        return 2
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    context = Context()
    rclpy.init(args=["csr_node", *ros_args], context=context)
    stop = threading.Event()
    _install_signal_handlers(stop)  # before the (possibly slow) model load: a SIGINT is kept
    core_log = logging.getLogger("csr_ros")
    graph = None
    try:
        graph = Graph(context, stop)
        core_log.addHandler(_RosLogHandler(graph.node.get_logger()))
        core_log.setLevel(logging.INFO)
        graph.start()
        if graph.node.get_parameter("ros.autostart").value:
            code = graph.bring_up()
            if code:
                return code
        graph.log_up()
        graph.wait()
        return 1 if graph.failed else 0
    except ConfigError as e:
        print(f"csr_node: bad configuration: {e}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - e.g. a model or an action registry that cannot be loaded
        logging.getLogger("csr_ros.bringup").exception("csr_node failed")
        return 1
    finally:
        if graph is not None:
            graph.shutdown()
        else:
            context.try_shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``csr_node`` executable (launch_ros passes ``--ros-args ...`` in ``sys.argv``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run(args)
