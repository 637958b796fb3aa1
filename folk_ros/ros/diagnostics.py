"""/diagnostics for the folk_segmenter node: one DiagnosticStatus per period (ROS diagnostics conventions).

:class:`NodeStats` is what the callbacks and the worker count (thread-safe); :func:`status` turns two
snapshots of it into a ``diagnostic_msgs/DiagnosticStatus``: rates over the period, drops, the last
latency by stage, model and device. Levels:

- ERROR: the worker thread is gone, or the last cloud failed (the message says how);
- WARN: clouds were dropped in each of the last ``steady`` periods (segmentation is steadily slower than
  the input), or the last cloud took longer than ``max_latency_s``;
- OK otherwise (also while no cloud has come yet).

Pure functions and a counter class; the node only adds a timer and a publisher.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

STEADY_PERIODS = 3


@dataclass(frozen=True)
class Snapshot:
    """Counters at one moment (``time.monotonic`` seconds)."""

    at: float
    received: int = 0           # valid clouds handed to the worker
    rejected: int = 0           # messages refused before the worker (format, size, frame)
    processed: int = 0          # clouds whose outputs were published
    dropped: int = 0            # valid clouds replaced by a newer one before the worker took them
    failed: int = 0             # clouds whose processing or publishing failed
    last_error: str = ""        # the last failure, "" if the last cloud went through
    last_timings: dict = field(default_factory=dict)   # stage -> ms of the last processed cloud


class NodeStats:
    """Counters shared by the executor callbacks and the worker (a lock; every update is O(1))."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._snap = Snapshot(at=clock())

    def add(self, **counts: int) -> None:
        with self._lock:
            self._snap = replace(self._snap, **{k: getattr(self._snap, k) + v for k, v in counts.items()})

    def processed_ok(self, timings: dict) -> None:
        with self._lock:
            self._snap = replace(self._snap, processed=self._snap.processed + 1, last_error="",
                                 last_timings=dict(timings))

    def failure(self, text: str) -> None:
        with self._lock:
            self._snap = replace(self._snap, failed=self._snap.failed + 1, last_error=text)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return replace(self._snap, at=self._clock())


@dataclass
class DiagnosticsState:
    """What :func:`status` remembers between periods: the previous snapshot and recent drop counts."""

    previous: Snapshot
    drops: deque = field(default_factory=lambda: deque(maxlen=STEADY_PERIODS))


def status(now: Snapshot, state: DiagnosticsState, *, name: str, hardware_id: str, worker_alive: bool,
           max_latency_s: float, extra: dict[str, str] | None = None) -> DiagnosticStatus:
    """The status of the period since ``state.previous`` (then ``state`` moves on to ``now``)."""
    prev = state.previous
    period = max(now.at - prev.at, 1e-9)
    dropped_now = now.dropped - prev.dropped
    state.drops.append(dropped_now)
    state.previous = now
    total_ms = sum(now.last_timings.values())
    level, message = DiagnosticStatus.OK, "ok" if now.processed else "waiting for clouds"
    if max_latency_s > 0 and total_ms > max_latency_s * 1e3:
        level, message = DiagnosticStatus.WARN, f"last cloud took {total_ms / 1e3:.2f} s (> {max_latency_s:g} s)"
    if len(state.drops) == STEADY_PERIODS and all(d > 0 for d in state.drops):
        level, message = DiagnosticStatus.WARN, (f"clouds dropped in each of the last {STEADY_PERIODS} periods: "
                                                 f"segmentation is slower than the input")
    if now.last_error:
        level, message = DiagnosticStatus.ERROR, f"last cloud failed: {now.last_error}"
    if not worker_alive:
        level, message = DiagnosticStatus.ERROR, "the worker thread is not running"
    values = {
        "input rate (Hz)": f"{(now.received - prev.received) / period:.2f}",
        "processed rate (Hz)": f"{(now.processed - prev.processed) / period:.2f}",
        "dropped in period": str(dropped_now),
        "dropped total": str(now.dropped),
        "rejected total": str(now.rejected),
        "failed total": str(now.failed),
        "processed total": str(now.processed),
        "last latency total (ms)": f"{total_ms:.1f}",
        **{f"last latency {stage} (ms)": f"{ms:.1f}" for stage, ms in now.last_timings.items()},
        **(extra or {}),
    }
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])
