"""The node in map mode over real rclpy: stable ids, the map services, re-labelling, files in map_dir.

The node runs once per module as a subprocess with the UNTRAINED test bundle (random weights: labels
are meaningless, so these tests check the plumbing of the live map; its association rules are tested
on hand-made instances in test_instance_map.py, its quality in bench/bench_live_map.py).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from folk_ros.core.instance_map import InstanceMap
from folk_ros.core.map_file import load_map, save_map
from folk_ros.ros import parameters as params
from folk_ros.ros.node import TOPIC_INSTANCES, TOPIC_LABELED, TOPIC_MARKERS
from test.fixtures import make_untrained_bundle
from test.ros_harness import REPO, TIMEOUT, cloud_fields, ready_probe, room_msg, running_node

pytestmark = pytest.mark.ros   # starts the node: needs rclpy and the ROS 2 middleware

MAP_ARGS = ["-p", "mode:=map", "-p", "map_file:=live.map", "-p", "map_min_voxels:=1"]


@pytest.fixture(scope="module")
def map_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("maps")


@pytest.fixture(scope="module")
def map_node(tmp_path_factory, map_dir):
    with running_node(tmp_path_factory.mktemp("map_node"), [*MAP_ARGS, "-p", f"map_dir:={map_dir}"]) as proc:
        yield proc


@pytest.fixture(scope="module")
def probe(map_node):
    with ready_probe(map_node) as p:
        yield p


def _call(probe, srv_type, name, request):
    client = probe.node.create_client(srv_type, f"/{params.NODE_NAME}/{name}")
    try:
        assert client.wait_for_service(timeout_sec=TIMEOUT), f"service {name} not offered"
        return probe.call(lambda: client.call_async(request), what=f"the {name} service")
    finally:
        probe.node.destroy_client(client)


def _query(probe, phrases, max_results=5, min_score=0.0):
    from folk_ros_interfaces.srv import QueryMap
    request = QueryMap.Request(phrases=phrases, max_results=max_results, min_score=min_score)
    return _call(probe, QueryMap, "query", request)


def _ids(inst_msg) -> list[int]:
    return [i.id for i in inst_msg.instances]


def test_ids_are_stable_and_outputs_agree(probe, map_node):
    msg, xyz = room_msg()
    first = probe.result(probe.publish(msg))
    inst = first[TOPIC_INSTANCES]
    ids = _ids(inst)
    assert ids and len(set(ids)) == len(ids) and ids == sorted(ids)
    for i in inst.instances:
        assert i.observations == 1 and i.first_seen == i.last_seen == inst.header.stamp
        q = i.obb_pose.orientation
        assert abs(q.w ** 2 + q.z ** 2 - 1.0) < 1e-6 and q.x == q.y == 0.0    # gravity-aligned yaw only
        assert i.bbox_min.z - 1e-6 <= i.obb_pose.position.z <= i.bbox_max.z + 1e-6 and i.obb_size.z > 0
    # labeled cloud: a point's instance_id is the stable id of an instance whose point_indices hold it
    pts = cloud_fields(first[TOPIC_LABELED])
    assert set(np.unique(pts["instance_id"])) <= set(ids) | {-1}
    for i in inst.instances:
        assert len(i.point_indices) > 0
        labeled_as_i = np.flatnonzero(pts["instance_id"] == i.id)
        assert np.isin(labeled_as_i, np.asarray(i.point_indices)).all()
    # markers: one id per instance, no DELETEALL (RViz replaces them in place)
    from visualization_msgs.msg import Marker
    markers = first[TOPIC_MARKERS].markers
    assert all(m.action != Marker.DELETEALL for m in markers)
    assert {m.id for m in markers if m.ns.endswith("/boxes")} == set(ids)
    # the same map again: nothing changed, nothing is segmented, the same ids
    again = probe.result(probe.publish(msg))[TOPIC_INSTANCES]
    assert _ids(again) == ids and all(i.observations == 1 for i in again.instances)
    # the map grows (the room seen twice as large): old ids stay or go, new ids are new
    grown, _ = room_msg(seed=1)
    grown_xyz = cloud_fields(grown)
    moved = np.stack([grown_xyz["x"] + 6.0, grown_xyz["y"], grown_xyz["z"]], 1)
    both = np.concatenate([xyz[np.isfinite(xyz).all(1)], moved[np.isfinite(moved).all(1)]])
    from folk_ros.ros.conversions import cloud_to_msg
    from std_msgs.msg import Header
    rgb = np.full((len(both), 3), 0.5, np.float32)
    out = probe.result(probe.publish(cloud_to_msg(both, rgb, Header())))[TOPIC_INSTANCES]
    later = _ids(out)
    assert len(set(later)) == len(later)
    assert all(i in ids or i > max(ids) for i in later), "ids are never renumbered or reused"
    assert not map_node.errors()


def test_cloud_in_another_frame_is_skipped_with_one_warning(probe, map_node):
    msg, _ = room_msg()

    def warnings():
        return [line for line in map_node.log().splitlines() if "'odom' skipped" in line]

    before = probe.count(TOPIC_INSTANCES)
    probe.publish(msg, frame_id="odom")
    probe.wait_until(lambda: warnings(), what="the warning")
    for _ in range(2):
        probe.publish(msg, frame_id="odom")
        time.sleep(0.3)                         # one at a time through the depth-1 subscription
    probe.result(probe.publish(msg))            # a map-frame cloud after them is answered
    assert probe.count(TOPIC_INSTANCES) == before + 1, "clouds in another frame give no output"
    assert len(warnings()) == 1 and "map_frame 'map'" in warnings()[0]


def test_vocabulary_change_relabels_and_republishes_without_a_cloud(probe):
    from rclpy.parameter import Parameter
    probe.result(probe.publish(room_msg()[0]))
    last = probe.latest(TOPIC_INSTANCES)
    before = probe.count(TOPIC_INSTANCES)
    new_vocab = ["mug", "fire extinguisher"]
    result = probe.call(lambda: probe.params.set_parameters([Parameter("vocabulary", value=new_vocab)]))
    assert result.results[0].successful
    probe.wait_until(lambda: probe.count(TOPIC_INSTANCES) > before, what="the re-labelled map")
    relabeled = probe.latest(TOPIC_INSTANCES)
    assert list(relabeled.vocabulary) == new_vocab and relabeled.header.stamp == last.header.stamp
    assert _ids(relabeled) == _ids(last)       # same objects, new names
    assert all(i.label in new_vocab for i in relabeled.instances)


def test_query_ranks_instances_and_refuses_bad_requests(probe):
    probe.result(probe.publish(room_msg()[0]))
    answer = _query(probe, ["a red box", "a green box"], max_results=2)
    assert answer.success, answer.message
    assert 1 <= len(answer.instances) <= 2 and len(answer.scores) == len(answer.instances)
    assert list(answer.scores) == sorted(answer.scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in answer.scores)
    assert set(answer.matched_phrases) <= {"a red box", "a green box"}
    assert {i.id for i in answer.instances} <= set(_ids(probe.latest(TOPIC_INSTANCES)))
    assert answer.header.frame_id == "map"
    none = _query(probe, ["a red box"], max_results=5, min_score=1.0)
    assert none.success and len(none.instances) == 0
    for phrases, k, min_score, reason in [([], 5, 0.0, "phrases is empty"), (["box"], 0, 0.0, "max_results"),
                                          (["box"], -3, 0.0, "max_results"), ([""], 5, 0.0, "non-empty"),
                                          (["box"], 5, 2.0, "min_score"), (["x" * 1000], 5, 0.0, "characters"),
                                          (["box"] * 100, 5, 0.0, "at most")]:
        bad = _query(probe, phrases, k, min_score)
        assert not bad.success and reason in bad.message, (phrases[:2], k, bad.message)


def test_save_map_writes_only_inside_map_dir(probe, map_dir, tmp_path):
    from folk_ros_interfaces.srv import SaveMap
    probe.result(probe.publish(room_msg()[0]))
    for name in ("../escape.map", "/tmp/abs.map", "sub/dir.map", "..", f"{tmp_path}/x.map", "a\\b.map"):
        answer = _call(probe, SaveMap, "save_map", SaveMap.Request(file_name=name))
        assert not answer.success and "refused" in answer.message, (name, answer.message)
    assert not (map_dir.parent / "escape.map").exists() and not (tmp_path / "x.map").exists()
    answer = _call(probe, SaveMap, "save_map", SaveMap.Request(file_name="kitchen.map"))
    assert answer.success, answer.message
    assert answer.path == str(map_dir / "kitchen.map")
    saved = load_map(map_dir / "kitchen.map")
    assert set(_ids(probe.latest(TOPIC_INSTANCES))) <= set(saved.ids.tolist())
    assert sorted(p.name for p in map_dir.iterdir()) == ["kitchen.map"]   # map_file waits for shutdown
    default = _call(probe, SaveMap, "save_map", SaveMap.Request(file_name=""))
    assert default.success and default.path == str(map_dir / "live.map")


def test_reset_empties_the_map_and_ids_go_on(probe):
    from std_srvs.srv import Trigger
    probe.result(probe.publish(room_msg()[0]))
    before = _ids(probe.latest(TOPIC_INSTANCES))
    count = probe.count(TOPIC_INSTANCES)
    answer = _call(probe, Trigger, "reset_map", Trigger.Request())
    assert answer.success and "reset" in answer.message
    probe.wait_until(lambda: probe.count(TOPIC_INSTANCES) > count, what="the emptied map")
    assert _ids(probe.latest(TOPIC_INSTANCES)) == []
    from visualization_msgs.msg import Marker
    markers = probe.latest(TOPIC_MARKERS).markers
    assert {m.id for m in markers if m.action == Marker.DELETE} == set(before)
    after = _ids(probe.result(probe.publish(room_msg()[0]))[TOPIC_INSTANCES])
    assert after and min(after) > max(before), "ids are never reused in a session"


def test_shutdown_saves_map_file_and_a_restart_loads_it(map_node, probe, map_dir, tmp_path):
    probe.result(probe.publish(room_msg()[0]))
    ids = _ids(probe.latest(TOPIC_INSTANCES))
    probe.close()
    map_node.stop()
    assert map_node.proc.returncode == 0
    log = map_node.log()
    saved = load_map(map_dir / "live.map")
    assert set(ids) <= set(saved.ids.tolist())
    assert f"map saved on shutdown: {len(saved.ids)} instances to {map_dir / 'live.map'}" in log
    assert "Failed to publish" not in log   # logged once the node is gone, not through its dead /rosout
    with running_node(tmp_path, [*MAP_ARGS, "-p", f"map_dir:={map_dir}"]) as node2:
        with ready_probe(node2) as p2:
            out = p2.result(p2.publish(room_msg()[0]))[TOPIC_INSTANCES]
            assert set(_ids(out)) & set(ids), "the restarted node goes on with the saved map's ids"
        assert "map loaded from" in node2.log()


def test_a_shutdown_save_that_fails_is_logged_and_the_node_still_shuts_down(tmp_path):
    maps = tmp_path / "maps"
    with running_node(tmp_path, [*MAP_ARGS, "-p", f"map_dir:={maps}"]) as node:
        with ready_probe(node) as probe:
            probe.result(probe.publish(room_msg()[0]))
        (maps / "live.map" / "in_the_way").mkdir(parents=True)   # a folder where the map file goes
        node.stop()
    log = node.log()
    assert node.proc.returncode == 0 and "shut down" in log and "Traceback" not in log
    assert f"cannot save the map to {maps / 'live.map'}" in log and "map saved on shutdown" not in log
    assert "Failed to publish" not in log


def test_map_mode_in_utm_coordinates(tmp_path):
    """The map takes its origin from the first cloud: UTM clouds keep their precision and come back in UTM,
    and the saved map remembers the origin."""
    from folk_ros.ros.conversions import cloud_to_msg
    from std_msgs.msg import Header
    from test.fixtures import box_room_cloud
    offset = np.array([4_600_000.25, 500_000.5, 30.0])
    maps = tmp_path / "maps"
    with running_node(tmp_path, [*MAP_ARGS, "-p", f"map_dir:={maps}"]) as node:
        with ready_probe(node) as probe:
            cloud, _ = box_room_cloud(seed=2)
            utm = cloud.xyz.astype(np.float64) + offset
            out = probe.result(probe.publish(cloud_to_msg(utm, cloud.rgb, Header())))
            inst = out[TOPIC_INSTANCES]
            assert inst.instances
            for i in inst.instances:
                assert abs(i.centroid.x - offset[0]) < 10 and abs(i.obb_pose.position.y - offset[1]) < 10
            pts = cloud_fields(out[TOPIC_LABELED])
            np.testing.assert_allclose(np.c_[pts["x"], pts["y"], pts["z"]], utm, atol=1e-6)
            answer = _query(probe, ["a box"], max_results=1)
            assert answer.success and abs(answer.instances[0].centroid.x - offset[0]) < 10
    saved = load_map(maps / "live.map")
    assert np.abs(saved.frame_origin - offset).max() < 10 and not node.errors()


@pytest.mark.parametrize("content, expect", [(b"not a map at all", "not a readable map"),
                                             (None, "another model")], ids=["corrupt", "another model's"])
def test_a_bad_map_file_is_a_one_line_startup_error(tmp_path, content, expect):
    bundle = make_untrained_bundle(tmp_path / "bundle")
    maps = tmp_path / "maps"
    maps.mkdir()
    if content is None:   # a valid map from another student (embedding space)
        save_map(InstanceMap(128, embedding_space="someone-else"), maps / "live.map")
    else:
        (maps / "live.map").write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "folk_ros.ros.node", "--ros-args", "--params-file",
                           "config/segment.yaml", "-p", f"model_bundle:={bundle}", "-p", "device:=cpu", *MAP_ARGS,
                           "-p", f"map_dir:={maps}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "[ERROR]" in lines[0] and expect in lines[0], lines


def test_bad_map_parameters_are_startup_errors(tmp_path):
    bundle = make_untrained_bundle(tmp_path / "bundle")
    for extra, expect in [(["-p", "map_file:=../x.map"], "map_file"), (["-p", "map_margin:=0.01"], "map_margin"),
                          (["-p", "mode:=tracking"], "mode")]:
        proc = subprocess.run([sys.executable, "-m", "folk_ros.ros.node", "--ros-args", "-p",
                               f"model_bundle:={bundle}", "-p", "device:=cpu", "-p", "mode:=map", *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, extra
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert len(lines) == 1 and expect in lines[0], lines
