"""The inference node ``csr``: a managed (lifecycle) node that forwards perception and requests to
the FrameScheduler and publishes what it returns. All decisions live in
:mod:`csr_ros.core.runtime.scheduler`.

Lifecycle (``ros2 lifecycle set /csr <transition>``; ``ros.autostart`` does configure + activate):
  configure   read and validate the parameters (a bad value fails the transition, logged with
              the parameter's name and range), build the core (load the model, restore the
              on-disk ledger), create the topics; the node is then *inactive*
  activate    action chunks are decided and published, questions are answered
  deactivate  the hold chunk is published once, then no chunk; open questions are CANCELLED
              (stop reason ``deactivated``); perception keeps being appended and recorded
              in the ledger (nothing is lost while inactive); status goes on
  cleanup     stop the core's work, close the ledger, free the model and its KV memory
  shutdown    from any state: as cleanup (the ledger is flushed and closed)

Topics (relative, so a namespace applies); created at configure, removed at cleanup:
  in : <inputs>            perception (ingest.py; sensor-data QoS unless configured otherwise)
       csr/ask             csr_ros/Utterance (a question with a request_id; rosbag-recordable)
       csr/instruction     std_msgs/String (the current task instruction)
  out: csr/language        csr_ros/Utterance: partials (is_final false), then one final
       csr/increments      csr_ros/StateIncrement, one per accepted perception message
       csr/status          csr_ros/CacheStatus (>= 1 Hz, transient local)
       /diagnostics        diagnostic_msgs/DiagnosticArray
Action ``csr/ask`` (csr_ros/action/Ask) and the services (ask_server.py, services.py) exist
from construction; they refuse while the node is not configured / not active.

The action chunks (csr/action_chunk, csr/joint_trajectory) come from the action clock, its own
node ``csr_actions`` (action_node.py); it and ``csr_reconciler`` follow this node's state
through :attr:`InferenceNode.followers` (bound at configure, unbound at cleanup).

Threads (declared in bringup.py): executor callbacks only call the scheduler's non-blocking
producers; the model work (``run_frame``, worker calls) runs in :meth:`run_worker`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from std_msgs.msg import String

from csr_ros.core.config import ConfigError
from csr_ros.core.runtime import live_params
from csr_ros.core.state.heap import release_free_memory
from csr_ros.msg import CacheStatus, StateIncrement, Utterance
from csr_ros.nodes import conversions as conv
from csr_ros.nodes import qos
from csr_ros.nodes.ask_server import AskServer
from csr_ros.nodes.ingest import Ingest
from csr_ros.nodes.parameters import declare_deferred, load_node_config
from csr_ros.nodes.services import ManagementServices

NODE_NAME = "csr"
HOLD_WAIT_S = 1.0  # deactivate waits this long for the action clock to publish the hold, s
OK, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


@dataclass(frozen=True)
class InferenceGroups:
    """Callback groups of the inference node (created in bringup.py, which documents them)."""

    perception: object
    requests: object
    status: object
    answers: object = None  # the Ask action (reentrant: one blocked execute per open goal)
    management: object = None  # the services (mutually exclusive)


class InferenceNode(LifecycleNode):
    """Declares its parameters on construction; ``configure`` validates them and builds the core
    with ``build_core(cfg, clock_ns)`` (bringup's). :meth:`start` wires it to a scheduler (tests
    may call it directly with a double)."""

    def __init__(self, context, cli_args: list[str] | None = None, parameter_overrides=None,
                 build_core: Callable | None = None, groups: InferenceGroups | None = None):
        super().__init__(NODE_NAME, context=context, cli_args=cli_args,
                         parameter_overrides=parameter_overrides)
        self._deferred = declare_deferred(self)  # bad values: reported by configure
        self.cfg, self.inputs = None, []
        self.build_core, self.core, self.scheduler = build_core, None, None
        self.ingest: Ingest | None = None
        self.last_error = ""  # why the last transition failed
        self.time_followers: list = []  # nodes whose use_sim_time follows this one's
        self.followers: list = []  # bind(core, cfg) / unbind(): the action clock, the reconciler node
        g = groups or InferenceGroups(*(MutuallyExclusiveCallbackGroup() for _ in range(3)))
        self.groups = InferenceGroups(g.perception, g.requests, g.status, g.answers or ReentrantCallbackGroup(),
                                      g.management or MutuallyExclusiveCallbackGroup())
        self._core_lock = threading.Lock()  # held by the worker for a frame; cleanup takes it
        self._entities: list = []  # publishers, subscriptions, timers made by start()
        self.ask_server = AskServer(self, self.groups.answers)
        self.management = ManagementServices(self, self.groups.management)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ parameters
    def load_config(self) -> None:
        """Read and validate every parameter (ConfigError names the culprit and its range)."""
        if self._deferred:
            raise ConfigError(next(iter(self._deferred.values())))
        self.cfg, self.inputs = load_node_config(self)

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Writable rows of the table (``read_only`` false; rclpy refuses the others) are validated
        and put into effect on the running core; use_sim_time is forwarded to the followers."""
        from csr_ros.core.config import param_table, validate

        specs = {s.key: s for s in param_table()}
        changes = {}
        for p in params:
            if p.name in specs:
                why = live_params.refusal(p.name)
                if why:
                    return SetParametersResult(successful=False, reason=why)
                try:
                    changes[p.name] = validate(specs[p.name], p.value)
                except ConfigError as e:
                    return SetParametersResult(successful=False, reason=str(e))
                self._deferred.pop(p.name, None)
        if changes and self.cfg is not None:
            self.cfg = self.cfg.replace(**{k.replace(".", "__"): v for k, v in changes.items()})
            if self.scheduler is not None and hasattr(self.scheduler, "engine"):
                live_params.apply(self.scheduler, self.cfg)
        for p in params:
            if p.name == "use_sim_time":  # the action clock follows this node's time source
                for node in self.time_followers:
                    node.set_parameters([p])
        return SetParametersResult(successful=True)

    def now_ns(self) -> int:
        """ROS time of this node's clock (simulated time when use_sim_time is set), ns."""
        return self.get_clock().now().nanoseconds

    @property
    def use_sim_time(self) -> bool:
        return bool(self.get_parameter("use_sim_time").value)

    @property
    def lifecycle_state(self) -> str:
        """``unconfigured`` | ``inactive`` | ``active`` | ``finalized`` (or a transition state)."""
        return self._state_machine.current_state[1]

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self.load_config()
            if self.build_core is None:
                raise RuntimeError("no core builder (bringup passes build_core)")
            self.core = self.build_core(self.cfg, self.now_ns)
        except Exception as e:  # noqa: BLE001 - ConfigError, a model that does not load, ...
            return self._fail("configure", e)
        self.core.scheduler.set_serving(False, hold=False)  # nothing was published yet
        self.start(self.core.scheduler, self.groups)
        for f in self.followers:
            f.bind(self.core, self.cfg)
        self.get_logger().info(f"configured: {len(self.inputs)} inputs, backend {self.cfg.model.backend}")
        return OK

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.scheduler.set_serving(True)
        return OK

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Hold once, cancel the open questions; waits (bounded) until the hold is published."""
        sched = self.scheduler
        held = sched.status().holds_published
        sched.set_serving(False)
        deadline = time.monotonic() + HOLD_WAIT_S
        while sched.status().holds_published == held and time.monotonic() < deadline and self.followers:
            time.sleep(0.005)
        return OK

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.teardown()
        return OK

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self.teardown()  # flushes and closes the on-disk ledger
        return OK

    def on_error(self, state) -> TransitionCallbackReturn:
        self.teardown()
        return OK  # -> unconfigured

    def _fail(self, what: str, e: Exception) -> TransitionCallbackReturn:
        self.last_error = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        self.get_logger().error(f"{what} failed: {self.last_error}")
        self.teardown()
        return FAILURE

    def teardown(self) -> None:
        """Stop the core's work and free it (idempotent): followers unbound, topics removed, the
        worker's current frame finished, the ledger closed, the model and KV memory released."""
        for f in reversed(self.followers):
            f.unbind()
        for entity in reversed(self._entities):
            self._destroy(entity)
        self._entities, self.ingest = [], None
        with self._core_lock:  # the worker is between frames
            sched, core, self.scheduler, self.core = self.scheduler, self.core, None, None
        if sched is not None and hasattr(sched, "calls"):
            sched.calls.fail_all("the node was cleaned up")
        self.ask_server.end_all("deactivated")
        if core is not None:
            core.close()
        del sched, core
        release_free_memory()

    def _destroy(self, entity) -> None:
        for destroy in (self.destroy_subscription, self.destroy_publisher, self.destroy_timer):
            try:
                if destroy(entity):
                    return
            except Exception:  # noqa: BLE001 - not of this kind
                continue

    # ------------------------------------------------------------------ wiring
    @property
    def frame_period_s(self) -> float:
        """Control period (the model worker's frames; the action clock runs at the same rate), s."""
        return 1.0 / self.cfg.control.control_rate_hz

    def start(self, scheduler, groups: InferenceGroups) -> None:
        """Create publishers, subscriptions and timers around ``scheduler``."""
        if self.cfg is None:
            self.load_config()
        ros = self.cfg.ros
        self.pub_language = self.create_publisher(Utterance, "csr/language", qos.LANGUAGE)
        self.pub_increments = self.create_publisher(StateIncrement, "csr/increments", qos.INCREMENTS)
        self.pub_status = self.create_publisher(CacheStatus, "csr/status", qos.STATUS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS)
        self.ingest = Ingest(self, self.inputs, scheduler.submit_increment, groups.perception,
                             ros.reject_log_throttle_s)
        ask = self.create_subscription(Utterance, "csr/ask", self._on_ask, qos.LANGUAGE,
                                       callback_group=groups.requests)
        instruction = self.create_subscription(String, "csr/instruction", self._on_instruction, qos.LANGUAGE,
                                               callback_group=groups.requests)
        # Status must go on regardless of a paused simulated clock: steady.
        self.status_timer = self.create_timer(1.0 / ros.status_rate_hz, self.publish_status,
                                              callback_group=groups.status,
                                              clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._entities = [self.pub_language, self.pub_increments, self.pub_status, self.pub_diag,
                          *self.ingest.subscriptions, ask, instruction, self.status_timer]
        with self._core_lock:
            self.scheduler = scheduler

    # ------------------------------------------------------------------ callbacks (executor)
    def _on_ask(self, msg: Utterance) -> None:
        try:
            refusal = self.scheduler.ask(*conv.utterance_request(msg))
            if refusal is not None:  # a clear answer on csr/language, never a silent drop
                self.pub_language.publish(conv.language_to_msg(refusal, self.now_ns()))
                self.get_logger().warning(f"request {refusal.request_id[:64]!r} {refusal.text}",
                                          throttle_duration_sec=self.cfg.ros.reject_log_throttle_s)
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"request {msg.request_id!r} failed: {type(e).__name__}: {e}",
                                    throttle_duration_sec=5.0)

    def _on_instruction(self, msg: String) -> None:
        try:
            self.scheduler.set_instruction(msg.data)
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"instruction failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    def publish_status(self) -> None:
        """csr/status + /diagnostics (ingest rejections are added to the engine's)."""
        try:
            sched = self.scheduler
            if sched is None:
                return
            status, now = sched.status(), self.now_ns()
            extra = self.ingest.rejected_total if self.ingest else 0
            self.pub_status.publish(conv.status_to_msg(status, now, extra))
            self.pub_diag.publish(conv.status_to_diagnostics(status, now, hardware_id=self.get_fully_qualified_name(),
                                                             extra_rejected=extra))
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"status publish failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ the model worker
    def run_worker(self, stop: threading.Event) -> None:
        """The model thread: ``run_frame`` once per frame period until ``stop`` (bringup starts
        it; idle while the node is unconfigured). Publishes the language pieces (the Ask
        action's to its goals) and the accepted increments each frame returns."""
        log, next_t = self.get_logger(), time.monotonic()
        while not stop.is_set():
            period_s = 0.05
            with self._core_lock:
                sched = self.scheduler
                if sched is not None:
                    period_s = self.frame_period_s
                    try:
                        self._frame(sched)
                    except Exception as e:  # noqa: BLE001 - the worker keeps going; the scheduler holds
                        log.error(f"frame failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)
            next_t = max(next_t + period_s, time.monotonic())
            stop.wait(max(0.0, next_t - time.monotonic()))

    def _frame(self, sched) -> None:
        outs = sched.run_frame()
        now = self.now_ns()
        for out in outs:
            if not self.ask_server.deliver(out):
                self.pub_language.publish(conv.language_to_msg(out, now))
        incs = sched.accepted_increments()
        if incs:
            version = sched.status().state_version
            for inc in incs:
                self.pub_increments.publish(conv.increment_to_msg(inc, version))
