"""ROS-free core of csr_ros: ledger, KV state, compaction, reconciler, scheduler, backends.

Nothing under ``csr_ros.core`` imports rclpy, ROS messages or launch (a test enforces it), so the
engine and its benchmarks run on any machine with torch and transformers.
"""
