"""The folk_segmenter node: its work helpers, and the node over real rclpy (the parameters, launch and
config files without a node: test_node_config.py).

The node runs once per module as a subprocess (``python -m folk_ros.ros.node --ros-args
--params-file config/segment.yaml ...``) with the UNTRAINED test bundle (random weights: labels are
meaningless, so these tests check plumbing and agreement, not accuracy). conftest.py isolates the
ROS graph (ROS_DOMAIN_ID per run, localhost only). Tests that share the node set the live parameters
they rely on themselves, so they pass in any order; the tests that stop, fault or slow a node start their
own (test/slow_node.py, test/faulty_node.py) in their own namespace.
"""

from __future__ import annotations

import array
import contextlib
import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from folk_ros.ros.node import TOPIC_IN, TOPIC_INSTANCES, TOPIC_LABELED, TOPIC_MARKERS
from folk_ros.ros.work import LatestSlot, Throttle, input_problem
from test.fixtures import box_room_cloud, make_untrained_bundle, segment_yaml_parameters
from test.ros_harness import cloud_fields, ready_probe, room_msg, running_node

REPO = Path(__file__).resolve().parents[1]
AUTO_PARAMS = {"use_sim_time", "start_type_description_service"}  # declared by rclpy itself


# ---------------------------------------------------------------------------------------------
# pure helpers


def test_latest_slot_keeps_only_the_newest():
    slot = LatestSlot()
    assert slot.put("a") is None
    assert slot.put("b") == "a"          # "a" was waiting: replaced, returned to be counted as dropped
    assert slot.take(timeout=0).item == "b"
    assert slot.take(timeout=0.01) is None
    got = []
    t = threading.Thread(target=lambda: got.append(slot.take()))
    t.start()
    slot.put("c")
    t.join(2)
    assert [w.item for w in got] == ["c"]
    slot.request("relabel")              # requests are never dropped by clouds
    slot.put("d")
    slot.put("e")
    work = slot.take(timeout=0)
    assert work.item == "e" and work.requests == {"relabel"}
    slot.request("relabel")
    work = slot.take(timeout=0)
    assert work.item is None and work.requests == {"relabel"}
    slot.put("f")
    slot.close()
    assert slot.take() is None and slot.closed   # closed: the worker stops, a waiting item is discarded


def test_throttle_per_key():
    now = [0.0]
    th = Throttle(5.0, clock=lambda: now[0])
    assert th.ready("a") and not th.ready("a") and th.ready("b")
    now[0] = 5.0
    assert th.ready("a")
    always = Throttle(0.0, clock=lambda: 0.0)
    assert always.ready("a") and always.ready("a")


def test_input_problem_checks_size_only():
    from sensor_msgs.msg import PointCloud2
    assert "empty cloud" in input_problem(PointCloud2(width=0, height=1), 10)
    assert "exceeds max_input_points" in input_problem(PointCloud2(width=11, height=1), 10)
    assert input_problem(PointCloud2(width=5, height=2), 10) is None


@pytest.fixture(scope="module")
def startup_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    bundle = make_untrained_bundle(root / "bundle")
    import torch
    from folk_ros.core.student import Student, StudentConfig
    torch.save(Student(StudentConfig(in_dim=7, hidden_dim=8, out_dim=128)).to_checkpoint(), root / "student7.pt")
    return bundle


@pytest.mark.parametrize("args, expect", [
    (["model_bundle:={tmp}/nowhere"], "nowhere"),
    (["model_bundle:={bundle}", "mask3d_checkpoint:={tmp}/missing.ckpt"], "missing.ckpt"),
    (["model_bundle:={bundle}", "student_checkpoint:={root}/student7.pt"], "student pools 7-d features"),
    (["model_bundle:={bundle}", "prompt_template:=a {{}} and {{}}"], "exactly once"),
    (["model_bundle:={bundle}", "prompt_template:={{}} {{}}"], "bad --ros-args"),
    (["model_bundle:={bundle}", "dbscan_eps:=-0.5"], "dbscan_eps must be -1"),
    (["model_bundle:={bundle}", "nms_iou:=-0.5"], "nms_iou must be -1"),
    (["model_bundle:={bundle}", "sparse_backend:=minkowski"], "MinkowskiEngine"),
], ids=["missing bundle", "missing mask3d checkpoint", "mismatched student", "two placeholders", "not yaml",
        "negative split", "negative nms", "minkowski absent"])
@pytest.mark.ros
def test_startup_errors_are_one_line_and_nonzero_exit(tmp_path, startup_bundle, args, expect):
    if "MinkowskiEngine" in expect and importlib.util.find_spec("MinkowskiEngine") is not None:
        pytest.skip("MinkowskiEngine is installed: the backend starts")
    subst = {"tmp": tmp_path, "bundle": startup_bundle, "root": startup_bundle.parent}
    ros_args = [x for a in args for x in ("-p", a.format(**subst))]
    proc = subprocess.run([sys.executable, "-m", "folk_ros.ros.node", "--ros-args", *ros_args, "-p", "device:=cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(errors) == 1 and "[ERROR]" in errors[0] and expect in errors[0], errors


# ---------------------------------------------------------------------------------------------
# the node over rclpy


@pytest.fixture(scope="module")
def node_proc(tmp_path_factory):
    with running_node(tmp_path_factory.mktemp("node")) as proc:
        yield proc


@pytest.fixture(scope="module")
def probe(node_proc):
    with ready_probe(node_proc) as p:
        yield p


@pytest.mark.ros
def test_outputs_agree_with_each_other_and_the_input(probe, node_proc):
    from visualization_msgs.msg import Marker
    msg, xyz = room_msg()
    stamp = probe.publish(msg)
    out = probe.result(stamp)
    inst, markers, labeled = out[TOPIC_INSTANCES], out[TOPIC_MARKERS], out[TOPIC_LABELED]
    for header in (inst.header, markers.markers[0].header, labeled.header):
        assert header.frame_id == "map" and (header.stamp.sec, header.stamp.nanosec) == stamp
    n, finite = len(xyz), np.isfinite(xyz).all(1)
    assert list(inst.vocabulary) == segment_yaml_parameters()["vocabulary"]
    m = len(inst.instances)
    assert m >= 1, "the untrained bundle finds at least one proposal in the box room"

    # labeled cloud: point i is input point i; NaN stays NaN and unlabeled
    pts = cloud_fields(labeled)
    assert labeled.width * labeled.height == n
    np.testing.assert_array_equal(np.c_[pts["x"], pts["y"], pts["z"]][finite], xyz[finite])
    assert (pts["instance_id"][~finite] == -1).all()
    assert set(np.unique(pts["instance_id"])) <= set(range(-1, m))

    assert markers.markers[0].action == Marker.DELETEALL
    by_ns = {(mk.ns, mk.id): mk for mk in markers.markers[1:]}
    assert len(by_ns) == 3 * m   # box, label, points per instance
    for i, it in enumerate(inst.instances):
        idx = np.asarray(it.point_indices, np.int64)
        assert it.id == i and it.label == inst.vocabulary[it.label_index]
        assert idx.size > 0 and finite[idx].all() and (np.diff(idx) > 0).all()
        # every point the labeled cloud gives to instance i is one of its points, with its label and score
        mine = np.flatnonzero(pts["instance_id"] == i)
        assert np.isin(mine, idx).all()
        assert (pts["label_index"][mine] == it.label_index).all() and np.allclose(pts["score"][mine], it.score)
        p = xyz[idx]
        np.testing.assert_allclose([it.centroid.x, it.centroid.y, it.centroid.z], p.mean(0), atol=1e-4)
        np.testing.assert_allclose([it.bbox_min.x, it.bbox_min.y, it.bbox_min.z], p.min(0), atol=1e-6)
        np.testing.assert_allclose([it.bbox_max.x, it.bbox_max.y, it.bbox_max.z], p.max(0), atol=1e-6)
        # the marker draws the instance's oriented box, which holds every one of its points
        box = np.array([[q.x, q.y, q.z] for q in by_ns[("folk/boxes", i)].points])
        q = it.obb_pose.orientation
        yaw = 2 * np.arctan2(q.z, q.w)
        center = np.array([it.obb_pose.position.x, it.obb_pose.position.y, it.obb_pose.position.z])
        size = np.array([it.obb_size.x, it.obb_size.y, it.obb_size.z])
        np.testing.assert_allclose(box.mean(0), center, atol=1e-5)
        c, s = np.cos(-yaw), np.sin(-yaw)
        local = p - center
        local = np.c_[c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]]
        assert (np.abs(local) <= size / 2 + 1e-4).all()
        assert np.prod(size) <= np.prod(p.max(0) - p.min(0)) + 1e-6   # never larger than the axis-aligned box
        assert by_ns[("folk/labels", i)].text == f"{it.label} {it.score:.2f}"
        assert len(by_ns[("folk/points", i)].points) > 0
    # the per-cloud log line, written after the outputs are published
    probe.wait_until(lambda: "-> %d instances" % m in node_proc.log(), what="the cloud's log line")
    log = node_proc.log()
    assert "proposals" in log and "segmented)" in log


@pytest.mark.ros
def test_vocabulary_change_takes_effect_on_the_next_cloud(probe):
    from rclpy.parameter import Parameter
    change = [Parameter("vocabulary", value=["mug", "plant"]), Parameter("prompt_template", value="a photo of a {}")]
    results = probe.call(lambda: probe.params.set_parameters(change)).results
    assert all(r.successful for r in results), [r.reason for r in results]
    msg, _ = room_msg(seed=1)
    inst = probe.result(probe.publish(msg), topics=(TOPIC_INSTANCES,))[TOPIC_INSTANCES]
    assert list(inst.vocabulary) == ["mug", "plant"]
    assert inst.instances and {i.label for i in inst.instances} <= {"mug", "plant"}


@pytest.mark.ros
def test_a_cloud_with_no_instance_above_the_threshold_gives_empty_outputs(probe):
    from rclpy.parameter import Parameter
    answer = probe.call(lambda: probe.params.set_parameters([Parameter("score_threshold", value=1.0)]))
    assert answer.results[0].successful
    try:
        out = probe.result(probe.publish(room_msg(seed=2)[0]))
    finally:
        probe.call(lambda: probe.params.set_parameters([Parameter("score_threshold", value=0.0)]))
    assert list(out[TOPIC_INSTANCES].instances) == []
    assert [m.action for m in out[TOPIC_MARKERS].markers] == [3]          # DELETEALL only
    fields = cloud_fields(out[TOPIC_LABELED])
    assert (fields["instance_id"] == -1).all() and (fields["score"] == 0).all()


@pytest.mark.ros
def test_invalid_parameter_values_are_rejected_and_old_kept(probe):
    from rclpy.parameter import Parameter
    good = [Parameter("vocabulary", value=["mug", "plant"]), Parameter("prompt_template", value="a photo of a {}")]
    assert all(r.successful for r in probe.call(lambda: probe.params.set_parameters(good)).results)
    bad = [(Parameter("vocabulary", Parameter.Type.STRING_ARRAY, []), "empty"),
           (Parameter("vocabulary", value=["mug", ""]), "non-empty strings"),
           (Parameter("vocabulary", value=["mug", "mug"]), "duplicate"),
           (Parameter("vocabulary", value=[1, 2]), "type"),                 # rclpy: descriptor type
           (Parameter("prompt_template", value="no placeholder"), "{}"),
           (Parameter("score_threshold", value=1.5), "range"),              # rclpy: descriptor range
           (Parameter("max_instances", value=5), "read-only")]
    for param, reason in bad:
        (res,) = probe.call(lambda: probe.params.set_parameters([param])).results
        assert not res.successful and reason in res.reason.lower() + res.reason, (param.name, res.reason)
    values = probe.call(lambda: probe.params.get_parameters(["vocabulary", "prompt_template", "max_instances"])).values
    assert list(values[0].string_array_value) == ["mug", "plant"]
    assert values[1].string_value == "a photo of a {}" and values[2].integer_value == 100
    msg, _ = room_msg(seed=2)
    inst = probe.result(probe.publish(msg), topics=(TOPIC_INSTANCES,))[TOPIC_INSTANCES]
    assert list(inst.vocabulary) == ["mug", "plant"]


def _raw_cloud(fields, point_step, width, data, height=1):
    from sensor_msgs.msg import PointCloud2, PointField
    buf = array.array("B")
    buf.frombytes(data)
    return PointCloud2(height=height, width=width, point_step=point_step, row_step=point_step * width,
                       fields=[PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in fields],
                       is_bigendian=False, is_dense=False, data=buf)


@pytest.mark.ros
def test_bad_input_gets_one_warning_each_and_the_node_survives(probe, node_proc):
    from sensor_msgs.msg import PointField
    f32, i32 = PointField.FLOAT32, PointField.INT32
    xyz_fields = [("x", 0, f32), ("y", 4, f32), ("z", 8, f32)]
    nan = np.full((100, 3), np.nan, np.float32).tobytes()
    huge = 5_000_000
    cases = [
        ("empty", _raw_cloud(xyz_fields, 12, 0, b""), "empty cloud"),
        ("all-NaN", _raw_cloud(xyz_fields, 12, 100, nan), "none of its 100 points is finite"),
        ("missing z", _raw_cloud(xyz_fields[:2], 8, 100, bytes(800)), "has no 'z' field"),
        ("int32 x/y/z", _raw_cloud([("x", 0, i32), ("y", 4, i32), ("z", 8, i32)], 12, 100, bytes(1200)),
         "datatype INT32"),
        ("truncated", _raw_cloud(xyz_fields, 12, 1000, bytes(1200)), "is truncated"),
        ("5M points", _raw_cloud(xyz_fields, 12, huge, bytes(12 * huge)), "exceeds max_input_points"),
        ("no colour", room_msg(seed=3, color=False)[0], "no colour fields"),
        ("tiny", _raw_cloud(xyz_fields, 12, 100, np.random.default_rng(0).uniform(0, 0.05, (100, 3))
                            .astype(np.float32).tobytes()), "cloud skipped: the cloud fits in one"),
    ]
    for name, msg, warning in cases:
        probe.publish(msg)
        probe.wait_until(lambda: warning in node_proc.log(), what=f"the warning for the {name} cloud")
        assert node_proc.proc.poll() is None, f"node died on the {name} cloud"
    probe.publish(cases[0][1])                       # the same problem again: throttled, not repeated
    good, _ = room_msg(seed=4)
    assert probe.result(probe.publish(good))[TOPIC_INSTANCES].instances
    log = node_proc.log()
    for name, _, warning in cases:
        lines = [line for line in log.splitlines() if warning in line]
        assert len(lines) == 1 and "[WARN]" in lines[0], (name, lines)
    assert "Traceback" not in log


@pytest.mark.ros
def test_utm_clouds_just_work_and_a_stray_point_is_one_warning(probe, node_proc):
    """Outdoor robots publish maps in UTM: the node recentres (float64), segments, and answers in UTM."""
    from folk_ros.ros.conversions import cloud_to_msg
    from std_msgs.msg import Header
    cloud, _ = box_room_cloud(seed=5)
    offset = np.array([4_600_000.25, 500_000.5, 30.0])
    utm = cloud.xyz.astype(np.float64) + offset
    out = probe.result(probe.publish(cloud_to_msg(utm, cloud.rgb, Header())))
    inst, labeled = out[TOPIC_INSTANCES], out[TOPIC_LABELED]
    assert inst.instances
    for it in inst.instances:
        p = utm[np.asarray(it.point_indices, np.int64)]
        np.testing.assert_allclose([it.centroid.x, it.centroid.y, it.centroid.z], p.mean(0), atol=1e-3)
        assert abs(it.obb_pose.position.x - offset[0]) < 10.0
    pts = cloud_fields(labeled)
    np.testing.assert_allclose(np.c_[pts["x"], pts["y"], pts["z"]], utm, atol=1e-6)   # FLOAT64 back, exact
    stray = np.vstack([cloud.xyz, [[1e9, 0.0, 0.0]]])
    rgb = np.vstack([cloud.rgb, [[0.5, 0.5, 0.5]]])
    out = probe.result(probe.publish(cloud_to_msg(stray, rgb, Header())))
    assert out[TOPIC_INSTANCES].instances
    probe.wait_until(lambda: "1 points farther than max_range" in node_proc.log(), what="the outlier warning")
    assert "ERROR" not in node_proc.log()


@pytest.mark.ros
def test_good_clouds_survive_a_flood_of_bad_ones(probe):
    """Rejected messages at ~300/s interleaved with good clouds: every good cloud is answered (with the
    old qos_depth 1, 0 of 10 were)."""
    from sensor_msgs.msg import PointField
    f32 = PointField.FLOAT32
    bad = [_raw_cloud([("x", 0, f32), ("y", 4, f32)], 8, 100, bytes(800)),                 # no z
           _raw_cloud([("x", 0, f32), ("y", 4, f32), ("z", 8, f32)], 12, 0, b"")]          # empty
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    flooder = probe.node.create_publisher(PointCloud2, TOPIC_IN,   # a misbehaving node beside the good one
                                          QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    probe.wait_until(lambda: flooder.get_subscription_count() > 0, what="the flooder's match")
    try:
        for k in range(5):
            for i in range(60):                       # ~0.2 s of bad traffic around each good cloud
                flooder.publish(bad[i % 2])
                time.sleep(0.003)
                if i == 30:
                    stamp = probe.publish(room_msg(seed=10 + k)[0])
            assert probe.result(stamp)[TOPIC_INSTANCES].header.stamp.sec == stamp[0]
    finally:
        probe.node.destroy_publisher(flooder)


@pytest.mark.ros
def test_clouds_arriving_while_one_is_processed(tmp_path):
    """Latest-only: while the worker holds a cloud, newer ones replace each other; only the last is processed.
    test/slow_node.py holds each segmentation until the test's gate file exists, and the node's own drop
    count (/diagnostics "dropped total") says when the newer clouds have reached it: no sleeps."""
    from diagnostic_msgs.msg import DiagnosticArray
    ns = "/slow"
    with running_node(tmp_path, ["-r", f"__ns:={ns}", "-p", "diagnostics_period_s:=0.2"],
                      module=("test.slow_node", str(tmp_path))) as node, ready_probe(node, ns) as probe:
        dropped = []
        probe.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: dropped.extend(
            int(kv.value) for s in m.status if s.name.startswith(f"{ns}/folk_segmenter:")
            for kv in s.values if kv.key == "dropped total"), 10)
        first = probe.publish(room_msg(seed=5)[0])
        probe.wait_until(lambda: "segmentation 1 started" in node.log(), what="the worker holding the first cloud")
        waiting = [probe.publish(room_msg(seed=6 + k)[0]) for k in range(3)]
        probe.wait_until(lambda: dropped and dropped[-1] == 2, what="two clouds replaced by newer ones")
        # the parameter service answers while the first cloud is being segmented
        probe.call(lambda: probe.params.get_parameters(["score_threshold"]), what="get_parameters during segmentation")
        assert first not in probe.outputs
        (tmp_path / "go").touch()
        probe.result(waiting[-1])                        # the latest cloud is always processed
        done = [s for s in [first, *waiting] if TOPIC_INSTANCES in probe.outputs.get(s, {})]
        assert done == [first, waiting[-1]], done       # latest-only: the clouds in between were replaced
        assert "slow_node: segmentation 3 started" not in node.log()
        assert "clouds dropped so far (latest-only)" in node.log()


@pytest.mark.ros
def test_declared_parameters_equal_the_yaml(probe):
    names = probe.call(lambda: probe.params.list_parameters()).result.names
    assert set(names) - AUTO_PARAMS == set(segment_yaml_parameters())


@pytest.mark.ros
def test_a_failed_publish_is_logged_once_with_its_traceback_and_the_node_goes_on(tmp_path):
    """test/faulty_node.py: the first instances publish raises; the worker must not die silently."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    ns = "/faulty"
    with running_node(tmp_path, ["-r", f"__ns:={ns}", "-p", "diagnostics_period_s:=0.2"],
                      module=("test.faulty_node",)) as node, ready_probe(node, ns) as probe:
        statuses = []
        probe.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(
            s for s in m.status if s.name.startswith(f"{ns}/folk_segmenter:")), 10)   # not other nodes' statuses
        probe.wait_until(lambda: statuses, what="/diagnostics")
        msg, _ = room_msg()
        first = probe.publish(msg)
        probe.wait_until(lambda: "publishing failed" in node.log(), what="the error line")
        probe.wait_until(lambda: any(s.level == DiagnosticStatus.ERROR for s in statuses), what="an ERROR status")
        error = next(s for s in statuses if s.level == DiagnosticStatus.ERROR)
        assert "last cloud failed: publishing failed" in error.message
        second = probe.result(probe.publish(msg))           # still serving
        assert TOPIC_INSTANCES in second and TOPIC_INSTANCES not in probe.outputs.get(first, {})
        seen = len(statuses)
        probe.wait_until(lambda: any(s.level == DiagnosticStatus.OK for s in statuses[seen:]), what="OK again")
        values = {kv.key: kv.value for kv in statuses[-1].values}
        assert values["processed total"] == "1" and values["failed total"] == "1"
        assert {"input rate (Hz)", "last latency proposals (ms)", "model bundle", "device"} <= set(values)
    log = node.log()
    assert log.count("publishing failed: RuntimeError: injected publish failure") == 1
    assert "Traceback" in log and "_fail_first_instances" in log


@pytest.mark.ros
@pytest.mark.parametrize("gap_s", [0.0, 0.05, 0.3])
def test_two_sigints_to_the_process_group_exit_cleanly(tmp_path, gap_s):
    """What Ctrl-C in a `ros2 launch` terminal does: the terminal's SIGINT and launch's forwarded one reach
    the node's process group; the node must exit with code 0 and no traceback (its exit time is measured in
    bench/bench_node_lifecycle.py)."""
    import os
    import signal
    bundle = make_untrained_bundle(tmp_path / "bundle")
    log = tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "folk_ros.ros.node", "--ros-args", "-p", "device:=cpu",
                                 "-p", "num_threads:=1", "-p", f"model_bundle:={bundle}"], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "ready" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "ready" in log.read_text(), log.read_text()
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(gap_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)   # a hang guard, not a time limit
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "shut down" in text


@pytest.mark.ros
def test_sigint_shuts_down_cleanly(tmp_path):
    """After serving a cloud, one SIGINT stops the node: exit code 0, no traceback, nothing published late."""
    with running_node(tmp_path, ["-r", "__ns:=/sigint"]) as node:
        with ready_probe(node, "/sigint") as probe:
            assert probe.result(probe.publish(room_msg(seed=1)[0]))[TOPIC_INSTANCES].instances
        sent = node.stop()
    assert sent == ["SIGINT"], f"needed {sent} to stop"
    assert node.proc.returncode == 0
    log = node.log()
    assert "shut down" in log and "Traceback" not in log and "Failed to publish" not in log
