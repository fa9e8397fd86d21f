"""QoS profiles of the csr_ros graph (one place, so every publisher/subscriber agrees).

* perception (high-rate sensors): the sensor-data profile (best effort, keep last 5, volatile);
  a late sample is worth less than a fresh one and must never stall the publisher. Event-like
  observations (std_msgs/String) default to reliable (see the input's ``qos`` parameter).
* actions and language: reliable, keep last; a consumer that joins late gets nothing old
  (volatile), because an old action chunk or a stale partial answer must not be executed/read.
* status: reliable + transient local, keep last 1, so a late subscriber (a dashboard, a test)
  immediately gets the latest status.
"""

from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

PERCEPTION = qos_profile_sensor_data
"""Sensor data: best effort, volatile, keep last 5."""

ACTIONS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                     reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
"""Action chunks and joint trajectories: reliable, keep last 10."""

LANGUAGE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
"""Requests, answers (streamed partials included) and instructions: reliable, deep queue. Deep
enough for a burst of hundreds of questions at once: every one reaches the node and gets its
own answer or refusal (a keep-last queue that overflows would drop requests silently)."""

STATUS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Cache status: reliable, transient local, latest only."""

INCREMENTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                        reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
"""Accepted increments (/csr/increments): reliable, so a recorder sees every one."""

DIAGNOSTICS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
"""/diagnostics, as diagnostic_updater publishes it."""

PERCEPTION_RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                                 reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.VOLATILE)
"""Event-like perception (std_msgs/String observations): reliable, so no observation is lost."""
