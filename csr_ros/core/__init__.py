"""ROS-free core of csr_ros, in four subsystems (the folders), layered bottom to top::

    state/      decides: pure bookkeeping, no torch     ledger, on-disk ledger store, prompt
                                                        template, tokenizer, stamps, entity memory,
                                                        focus, compaction plans
    model/      touches tensors or a serving engine     KV state + in-place layers, attention,
                                                        CUDA graphs, action-head module, device
                                                        (threads, streams), backends/
    reconcile/  builds off the hot path                 reconciler, versioned handoff, hot-path gate
    runtime/    runs the threads and the frames         engine, scheduler, frame loop, language
                                                        lane, action registry, policies, answers,
                                                        intake

plus ``config.py`` (the frozen, validated configuration from ``parameters.yaml``), which any of
them may read and which imports none of them.

Import directions (``test/core/test_layout.py`` enforces them): a layer imports only layers below
it (``state`` < ``model`` < ``reconcile`` < ``runtime``) and ``config``; only ``model`` imports
torch or transformers; nothing under ``csr_ros.core`` imports rclpy, ROS messages, launch,
``csr_ros.nodes`` or ``csr_ros.cli`` (``test/core/test_core_is_ros_free.py``), so the engine and
its benchmarks run on any machine with torch and transformers.
"""
