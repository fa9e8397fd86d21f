"""Observation stamps on ONE clock: the clock that also stamps the action chunks.

A perception message carries either its own stamp (``header.stamp``: when the sensor saw it,
on the sensor's clock) or none (``std_msgs/String``: the node uses the receive time, on the
node's clock). The state renders every increment's and every fact's time relative to ONE epoch
(pinned by the first increment), so all stamps must be on one clock. They are not when a bag is
replayed without ``use_sim_time`` (header stamps are the recording's, years away from the
node's clock), or when a sensor's clock is not synchronised: a fact would then read
"(at 95687906.5 s)". :func:`on_clock` keeps a message's own stamp when it agrees with the
scheduler's clock (within ``max_skew_ns``) and otherwise takes the receive time, moving the
facts' stamps by the same amount (their offsets within the message are kept).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from csr_ros.core.state.ledger import Fact


def on_clock(stamp_ns: int, facts: Sequence[Fact], now_ns: int, max_skew_ns: int) -> tuple[int, tuple[Fact, ...], bool]:
    """``(stamp_ns, facts, restamped)`` on the clock that read ``now_ns`` (ns).

    ``stamp_ns`` is kept when ``|now_ns - stamp_ns| <= max_skew_ns``; else it becomes ``now_ns``
    (the receive time) and every fact's stamp moves by ``now_ns - stamp_ns``.
    """
    if abs(now_ns - stamp_ns) <= max_skew_ns:
        return stamp_ns, tuple(facts), False
    shift = now_ns - stamp_ns
    return now_ns, tuple(dataclasses.replace(f, stamp_ns=f.stamp_ns + shift) for f in facts), True
