"""Thin rclpy adapters around :mod:`csr_ros.core` (the only code that imports rclpy and messages).

conversions (msg <-> core types), serializers (perception msgs -> observation text + facts),
parameters (the parameter table as ROS parameters), qos, ingest (perception subscriptions),
inference_node, reconciler_node, and bringup (executors, callback groups, threads, shutdown).
"""
