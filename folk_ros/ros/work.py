"""The hand-off between the node's executor and its worker thread, and the per-cloud bookkeeping.

Pure helpers with no Node: tested without spinning.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from folk_ros.core.live_map import MapUpdate
from folk_ros.core.pointcloud2 import CloudConversion

STAGES = ("convert", "downsample", "text", "change", "proposals", "postprocess", "student", "classify", "associate",
          "messages", "publish")


class LatestSlot:
    """A latest-only hand-off between the executor (put, request) and one worker (take).

    ``put`` replaces a waiting cloud and returns it (the caller counts it as dropped). ``request(name)``
    asks the worker for something besides clouds (e.g. "relabel" after a vocabulary change); requests
    are never dropped by clouds. ``take`` blocks until a cloud or a request is there, or ``close``, and
    returns a :class:`Work`; after ``close`` it returns None.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._requests: set[str] = set()
        self._closed = False

    def put(self, item) -> Any:
        with self._cond:
            replaced, self._item = self._item, item
            self._cond.notify()
            return replaced

    def request(self, name: str) -> None:
        with self._cond:
            self._requests.add(name)
            self._cond.notify()

    def take(self, timeout: float | None = None) -> "Work | None":
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._requests or self._closed, timeout)
            if self._closed or (self._item is None and not self._requests):
                return None
            work = Work(self._item, frozenset(self._requests))
            self._item, self._requests = None, set()
            return work

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._item = None
            self._requests.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass(frozen=True)
class Work:
    """What the worker takes from the slot: the newest cloud (or None) and the pending requests."""

    item: Any
    requests: frozenset


class Throttle:
    """``ready(key)``: True at most once per ``period_s`` for each key (period 0: always)."""

    def __init__(self, period_s: float, clock=time.monotonic):
        self.period_s = float(period_s)
        self._clock = clock
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = self._clock()
        if len(self._last) > 1000:  # keys are warning texts: a stream of ever-different ones must not grow
            self._last.clear()
        last = self._last.get(key)
        if self.period_s > 0 and last is not None and now - last < self.period_s:
            return False
        self._last[key] = now
        return True


def input_problem(msg: PointCloud2, max_input_points: int) -> str | None:
    """Why a message is skipped before it is read (size only), or None."""
    n = int(msg.width) * int(msg.height)
    if n == 0:
        return f"empty cloud (width {msg.width} x height {msg.height}): skipped"
    if n > max_input_points:
        return (f"cloud of {n:,} points exceeds max_input_points {max_input_points:,}: skipped "
                f"(downsample upstream or raise max_input_points)")
    return None


@dataclass(frozen=True)
class CloudReport:
    """What the per-cloud log line says: counts and milliseconds per stage (keys of STAGES)."""

    n_input: int
    n_nonfinite: int
    n_segmented: int
    n_instances: int
    timings: dict[str, float]
    map_instances: int | None = None   # map mode: instances in the map (n_instances: those shown)
    update: MapUpdate | None = None    # map mode: what the update did

    def line(self, processed: int, dropped: int) -> str:
        stages = " ".join(f"{k} {self.timings[k]:.1f}" for k in STAGES if k in self.timings)
        found = f"{self.n_instances} instances"
        if self.update is not None:
            r = self.update.result
            changes = "" if r is None else f", {len(r.new)} new, {len(r.removed)} removed, {len(r.merged)} merged"
            found = (f"map {self.map_instances} instances ({self.n_instances} shown{changes}; "
                     f"{self.update.kind}{' full pass' if self.update.full else ''}, "
                     f"{self.update.changed_voxels:,} of {self.update.voxels:,} voxels changed)")
        return (f"cloud {self.n_input:,} pts ({self.n_nonfinite:,} non-finite, {self.n_segmented:,} segmented) "
                f"-> {found} | ms: {stages} | total {sum(self.timings.values()):.1f} "
                f"| processed {processed}, dropped {dropped}")


@dataclass
class Job:
    """A converted cloud waiting for the worker."""

    header: Header
    conv: CloudConversion
    n_input: int
    convert_ms: float
