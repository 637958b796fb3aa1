"""Test double: the real ``folk_segmenter`` node whose segmentations wait for the test's go-ahead.

``python -m test.slow_node GATE_DIR --ros-args ...`` runs :func:`folk_ros.ros.node.main` unchanged except that
``Segmenter.segment`` first prints ``slow_node: segmentation N started`` and then waits (up to 60 s) until the
file ``GATE_DIR/go`` exists. The test sees when the worker holds a cloud and decides when it lets go of it, so
"clouds arrive while one is processed" is staged without any timing assumption (the latest-only hand-off).
"""

import sys
import time
from itertools import count
from pathlib import Path

from folk_ros.core.segmenter import Segmenter
from folk_ros.ros import node

WAIT_S = 60.0   # a hang guard: the test creates the gate file within seconds


def _gated(segment, gate: Path):
    started = count(1)

    def gated_segment(self, *args, **kwargs):
        print(f"slow_node: segmentation {next(started)} started", flush=True)
        deadline = time.monotonic() + WAIT_S
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return segment(self, *args, **kwargs)
    return gated_segment


if __name__ == "__main__":
    gate = Path(sys.argv.pop(1)) / "go"
    Segmenter.segment = _gated(Segmenter.segment, gate)
    sys.exit(node.main())
