"""Test double: the real ``folk_segmenter`` node with a fixed delay in front of every segmentation.

``python -m test.slow_node DELAY_S --ros-args ...`` runs :func:`folk_ros.ros.node.main` unchanged except that
``Segmenter.segment`` first sleeps ``DELAY_S`` seconds. It makes "clouds arrive while one is processed"
happen on any machine, however fast, so that the latest-only hand-off is tested without timing luck.
"""

import sys
import time

from folk_ros.core.segmenter import Segmenter
from folk_ros.ros import node


def _with_delay(segment, delay_s: float):
    def slow_segment(self, *args, **kwargs):
        time.sleep(delay_s)
        return segment(self, *args, **kwargs)
    return slow_segment


if __name__ == "__main__":
    delay = float(sys.argv.pop(1))
    Segmenter.segment = _with_delay(Segmenter.segment, delay)
    sys.exit(node.main())
