"""The managed (lifecycle) folk_segmenter, driven through its real lifecycle services over rclpy."""

from __future__ import annotations

import time

import pytest

from folk_ros.ros.node import TOPIC_INSTANCES
from test.fixtures import make_untrained_bundle
from test.ros_harness import NODE_ARGS, TIMEOUT, Probe, room_msg
from demo.node_process import NodeProcess

pytestmark = pytest.mark.ros   # starts the node: needs rclpy and the ROS 2 middleware


def _start(tmp_path, extra=()):
    bundle = tmp_path / "bundle"
    if not bundle.exists():
        make_untrained_bundle(bundle)
    return NodeProcess([*NODE_ARGS, "-p", f"model_bundle:={bundle}", *extra], tmp_path / "node.log",
                       module=("folk_ros.ros.lifecycle_node",))


class Lifecycle:
    """Clients of the node's lifecycle services (what `ros2 lifecycle set/get` calls)."""

    def __init__(self, probe: Probe, node_name: str = "/folk_segmenter"):
        from lifecycle_msgs.srv import ChangeState, GetState
        self.probe = probe
        self.change = probe.node.create_client(ChangeState, f"{node_name}/change_state")
        self.get = probe.node.create_client(GetState, f"{node_name}/get_state")
        assert self.change.wait_for_service(timeout_sec=120) and self.get.wait_for_service(timeout_sec=TIMEOUT)
        self._warm_up()

    def _warm_up(self) -> None:
        """One answered change_state round trip before the real ones, which cannot be sent twice: a request sent
        right after discovery can be lost (seen once in a full run: no answer in 30 s). A transition label the
        node does not know changes nothing and logs nothing (rclpy answers success=False), so it is resent."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        unknown = ChangeState.Request(transition=Transition(label="folk_test_probe"))
        assert not self.probe.call(lambda: self.change.call_async(unknown), what="change_state").success

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState
        return self.probe.call(lambda: self.get.call_async(GetState.Request())).current_state.label

    def set(self, transition: str) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}
        request = ChangeState.Request(transition=Transition(id=ids[transition]))
        return self.probe.call(self.change.call_async(request)).success


def test_transitions_configure_activate_deactivate_cleanup(tmp_path):
    node = _start(tmp_path)
    probe = Probe()
    try:
        life = Lifecycle(probe)
        assert life.state() == "unconfigured"
        assert probe.pub.get_subscription_count() == 0           # nothing before activate
        assert life.set("configure") and life.state() == "inactive"
        assert "configured: bundle" in node.log()
        assert probe.pub.get_subscription_count() == 0
        assert life.set("activate") and life.state() == "active"
        probe.wait_until(lambda: probe.pub.get_subscription_count() > 0, what="the cloud_in subscription")
        probe.wait_until(lambda: probe.node.count_publishers(TOPIC_INSTANCES) > 0, what="publishers")
        out = probe.result(probe.publish(room_msg()[0]))
        assert out[TOPIC_INSTANCES].instances
        assert life.set("deactivate") and life.state() == "inactive"
        probe.wait_until(lambda: probe.pub.get_subscription_count() == 0, what="the subscription to go")
        assert life.set("cleanup") and life.state() == "unconfigured"
        assert "cleaned up: model freed" in node.log()
        assert life.set("configure") and life.set("activate")    # and back up again
        probe.wait_until(lambda: probe.pub.get_subscription_count() > 0, what="the subscription again")
        assert probe.result(probe.publish(room_msg(seed=2)[0]))[TOPIC_INSTANCES].instances
        assert not node.errors()
    finally:
        probe.close()
        sent = node.stop()
    assert sent == ["SIGINT"] and node.proc.returncode == 0
    assert "Traceback" not in node.log()


def test_configure_fails_cleanly_on_a_missing_bundle(tmp_path):
    node = NodeProcess([*NODE_ARGS, "-p", f"model_bundle:={tmp_path / 'nowhere'}"], tmp_path / "node.log",
                       module=("folk_ros.ros.lifecycle_node",))
    probe = Probe()
    try:
        life = Lifecycle(probe)
        assert not life.set("configure")
        assert life.state() == "unconfigured"
        errors = node.errors()
        assert len(errors) == 1 and "configure failed" in errors[0] and "nowhere" in errors[0]
        assert node.proc.poll() is None, "a failed configure leaves the node running, unconfigured"
    finally:
        probe.close()
        node.stop()
    assert "Traceback" not in node.log()


@pytest.mark.parametrize("mode", ["map"])
def test_map_mode_services_follow_the_lifecycle(tmp_path, mode):
    node = _start(tmp_path, ["-p", f"mode:={mode}", "-p", f"map_dir:={tmp_path / 'maps'}", "-p", "map_file:=m.map"])
    probe = Probe()
    try:
        life = Lifecycle(probe)
        names = lambda: {n for n, _ in probe.node.get_service_names_and_types()}  # noqa: E731
        assert "/folk_segmenter/query" not in names()
        assert life.set("configure") and life.set("activate")
        probe.wait_until(lambda: "/folk_segmenter/query" in names(), what="the map services")
        probe.wait_until(lambda: probe.pub.get_subscription_count() > 0, what="the subscription")
        probe.result(probe.publish(room_msg()[0]))
        assert life.set("deactivate") and life.set("cleanup")
        deadline = time.monotonic() + TIMEOUT
        while not (tmp_path / "maps" / "m.map").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "maps" / "m.map").is_file(), "cleanup saves map_file"
    finally:
        probe.close()
        node.stop()
    assert "Traceback" not in node.log()
