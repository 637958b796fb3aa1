"""Shared by the rclpy tests of the node: a probe node on its own context, the node as a subprocess."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np

from demo.node_process import NodeProcess, point_fields as cloud_fields  # noqa: F401 (for the tests)
from folk_ros.ros import parameters as params
from folk_ros.ros.node import TOPIC_IN, TOPIC_INSTANCES, TOPIC_LABELED, TOPIC_MARKERS
from test.fixtures import box_room_cloud, make_untrained_bundle

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0  # generous: two shared cores; only reached when something is broken
RESEND_S = 5.0  # an idempotent request unanswered this long is sent again (Probe.call)


class Probe:
    """A test-side node on its own context: publishes clouds, collects the outputs by stamp."""

    def __init__(self, namespace: str = ""):
        from demo.player import RosSession
        from folk_ros_interfaces.msg import InstanceArray
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2
        from visualization_msgs.msg import MarkerArray

        self.session = RosSession("folk_test_probe", namespace)
        self.node, self.thread = self.session.node, self.session.thread
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.outputs: dict[tuple[int, int], dict] = {}
        self.received: list[tuple[str, object]] = []     # every output message, in arrival order
        self.cond = threading.Condition()
        for topic, kind in ((TOPIC_INSTANCES, InstanceArray), (TOPIC_MARKERS, MarkerArray),
                            (TOPIC_LABELED, PointCloud2)):
            self.node.create_subscription(kind, topic, lambda msg, t=topic: self._store(t, msg), qos)
        self.pub = self.node.create_publisher(PointCloud2, TOPIC_IN, qos)
        self.params = AsyncParameterClient(self.node, f"{namespace}/{params.NODE_NAME}")
        self._next_sec = 100

    def _store(self, topic, msg):
        with self.cond:
            self.received.append((topic, msg))
            if topic != TOPIC_MARKERS or msg.markers:   # an empty MarkerArray has no header
                header = msg.markers[0].header if topic == TOPIC_MARKERS else msg.header
                self.outputs.setdefault((header.stamp.sec, header.stamp.nanosec), {})[topic] = msg
            self.cond.notify_all()

    def count(self, topic: str) -> int:
        """Messages received on ``topic`` so far."""
        with self.cond:
            return sum(t == topic for t, _ in self.received)

    def latest(self, topic: str):
        with self.cond:
            return next(msg for t, msg in reversed(self.received) if t == topic)

    def wait_until(self, predicate, timeout=TIMEOUT, what="condition"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cond.wait(min(left, 0.1))

    def publish(self, msg, frame_id: str = "map") -> tuple[int, int]:
        """Publish with a fresh stamp; returns the stamp."""
        self._next_sec += 1
        msg.header.stamp.sec, msg.header.stamp.nanosec = self._next_sec, 7
        msg.header.frame_id = frame_id
        self.pub.publish(msg)
        return (self._next_sec, 7)

    def result(self, stamp, topics=(TOPIC_INSTANCES, TOPIC_MARKERS, TOPIC_LABELED)) -> dict:
        self.wait_until(lambda: set(topics) <= set(self.outputs.get(stamp, {})), what=f"outputs of {stamp}")
        return self.outputs[stamp]

    def call(self, send, what: str = "a service answer"):
        """The response to one service request; its arrival wakes the wait (no polling delay in the round trip).

        ``send`` is either the request's future, waited on once, or a function sending an idempotent request
        (a parameter get/set, a map query), sent again every RESEND_S until answered: FastDDS can drop a response
        written before the server has matched the client's response reader (a full CI run once lost a first
        list_parameters request so, with the node idle), and a robot-side client retries the same way."""
        resend = callable(send)
        deadline = time.monotonic() + TIMEOUT
        while True:
            future = send() if resend else send
            future.add_done_callback(lambda _: self._wake())
            left = deadline - time.monotonic()
            with self.cond:
                self.cond.wait_for(future.done, min(left, RESEND_S) if resend else left)
            if future.done():
                return future.result()
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {what} (probe executor alive: {self.thread.is_alive()})")

    def _wake(self):
        with self.cond:
            self.cond.notify_all()

    def close(self):
        self.session.close()


NODE_ARGS = ["--params-file", "config/segment.yaml", "-p", "device:=cpu", "-p", "num_threads:=1",
             "-p", "score_threshold:=0.0", "-p", "min_points:=5", "-p", "max_points:=6000",
             "-p", "log_throttle_s:=60.0", "-p", "marker_points:=true"]


@contextlib.contextmanager
def running_node(tmp: Path, extra_args=(), module=("folk_ros.ros.node",)):
    bundle = tmp / "bundle"
    if not bundle.exists():
        make_untrained_bundle(bundle)
    proc = NodeProcess([*NODE_ARGS, "-p", f"model_bundle:={bundle}", *extra_args], tmp / "node.log", module)
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def ready_probe(node_proc: NodeProcess, namespace: str = ""):
    p = Probe(namespace)
    try:
        p.wait_until(lambda: p.pub.get_subscription_count() > 0 or node_proc.proc.poll() is not None,
                     timeout=120, what="the node's cloud_in subscription")
        assert node_proc.proc.poll() is None, f"node exited:\n{node_proc.log()}"
        p.wait_until(lambda: all(p.node.count_publishers(t) > 0
                                 for t in (TOPIC_INSTANCES, TOPIC_MARKERS, TOPIC_LABELED)), what="publishers")
        assert p.params.wait_for_services(timeout_sec=TIMEOUT)
        yield p
    finally:
        p.close()


def room_msg(seed=0, nan_rows=(5, 17, 4000), color=True, points_per_box=1500):
    """A box room as an organised 2 x N/2 PointCloud2 with a few NaN points; also returns its (N, 3) xyz."""
    from folk_ros.ros.conversions import cloud_to_msg
    from std_msgs.msg import Header
    cloud, _ = box_room_cloud(seed=seed, points_per_box=points_per_box)
    xyz = cloud.xyz.copy()
    xyz[list(nan_rows)] = np.nan
    msg = cloud_to_msg(xyz, cloud.rgb if color else None, Header())
    msg.height, msg.width, msg.row_step = 2, len(xyz) // 2, msg.point_step * (len(xyz) // 2)
    return msg, xyz
