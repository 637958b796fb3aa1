"""`make demo` end to end, and the bag player it is built on.

The demo runs as a subprocess on a tiny scene set (1 scene, 60 frames: two fused clouds) with the
UNTRAINED test bundle (test/fixtures.py: random weights, so labels mean nothing; these tests check
plumbing, the vocabulary change and that table, JSON and renders agree, not accuracy).
conftest.py isolates the ROS graph; the subprocesses inherit it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test.fixtures import make_untrained_bundle

REPO = Path(__file__).resolve().parents[1]
CLOUD_TOPIC = "/map/cloud"
STAMPS = ((12, 345678901), (13, 5), (15, 999999999))   # odd nanoseconds: nothing may round them


def _small_bag(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """A bag holding only three small fused clouds (no frames), stamped STAMPS; also returns their xyz."""
    from training.data.rosbag_io import write_bag
    rng = np.random.default_rng(0)
    xyzs = [rng.uniform(-2, 2, (100 + 50 * i, 3)).astype(np.float32) for i in range(len(STAMPS))]
    rgbs = [rng.integers(0, 256, (len(x), 3)).astype(np.uint8) for x in xyzs]
    bag = tmp_path / "bag"
    # write_bag takes seconds; sec + nanosec / 1e9 is exact enough to round back to the same nanosecond
    write_bag(bag, frames=[], clouds=[(s + n / 1e9, x, c) for (s, n), x, c in zip(STAMPS, xyzs, rgbs)])
    return bag, xyzs


def _wait(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# the player


def test_pick_evenly():
    from demo.player import pick_evenly
    assert pick_evenly(10, 4) == [0, 3, 6, 9]
    assert pick_evenly(2, 1) == [0] and pick_evenly(3, 0) == [0, 1, 2] and pick_evenly(3, 7) == [0, 1, 2]
    assert pick_evenly(0, 3) == []


@pytest.mark.ros
def test_player_publishes_recorded_clouds_with_their_stamps(tmp_path):
    from sensor_msgs.msg import PointCloud2

    from demo.player import QOS, CloudPlayer, RosSession, read_clouds, stamp_of
    from training.data.rosbag_io import pointcloud2_to_arrays

    bag, xyzs = _small_bag(tmp_path)
    clouds = read_clouds(bag, CLOUD_TOPIC)
    assert [c.stamp for c in clouds] == list(STAMPS) and [c.num_points for c in clouds] == [100, 150, 200]
    assert [c.index for c in read_clouds(bag, CLOUD_TOPIC, 2)] == [0, 2]
    with pytest.raises(ValueError, match="no topic '/nope'.*/map/cloud"):
        read_clouds(bag, "/nope")

    got = []
    with RosSession("test_sink", "/player_test") as sink, RosSession("test_player", "/player_test") as src:
        sink.node.create_subscription(PointCloud2, "cloud_in", got.append, QOS)
        player = CloudPlayer(src.node, "cloud_in", rate=20.0)   # paced by bag time / 20, no waiting
        player.wait_until_connected(30)
        played = list(player.play(clouds))
        _wait(lambda: len(got) == len(clouds), what="the played clouds")
    assert [p.cloud.stamp for p in played] == list(STAMPS)
    assert [stamp_of(m) for m in got] == list(STAMPS)   # the recorded header stamps, to the nanosecond
    for msg, cloud, xyz in zip(got, clouds, xyzs):
        assert msg.header.frame_id == "map" and msg.fields == cloud.msg.fields
        assert bytes(msg.data) == bytes(cloud.msg.data)
        decoded, _ = pointcloud2_to_arrays(msg.fields, msg.point_step, msg.data, width=msg.width)
        np.testing.assert_array_equal(decoded, xyz)


@pytest.mark.ros
def test_player_cli_waits_for_the_outputs_of_each_cloud(tmp_path):
    """`python -m demo.player` against an echo node that answers each cloud with an InstanceArray."""
    from folk_ros_interfaces.msg import InstanceArray
    from sensor_msgs.msg import PointCloud2

    from demo.player import QOS, RosSession, stamp_of

    bag, _ = _small_bag(tmp_path)
    seen = []
    with RosSession("test_echo", "/player_cli_test") as echo:
        pub = echo.node.create_publisher(InstanceArray, "instances", QOS)

        def answer(msg):
            seen.append(stamp_of(msg))
            pub.publish(InstanceArray(header=msg.header, vocabulary=["echo"]))

        echo.node.create_subscription(PointCloud2, "cloud_in", answer, QOS)
        proc = subprocess.run([sys.executable, "-m", "demo.player", str(bag), "--topic", CLOUD_TOPIC,
                               "--namespace", "/player_cli_test", "--timeout", "60"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seen == list(STAMPS)   # one at a time: no cloud replaced another in a queue
    lines = [line for line in proc.stdout.splitlines() if line.startswith("cloud ")]
    assert len(lines) == len(STAMPS)
    for line, (sec, nsec) in zip(lines, STAMPS):
        assert f"stamp {sec}.{nsec:09d}" in line and re.search(r"instances after [\d.]+ ms", line), line
    bad = subprocess.run([sys.executable, "-m", "demo.player", str(bag), "--topic", "/nope"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no topic '/nope'" in bad.stderr


def test_node_log_lines_parse():
    """The demo reads the node's per-cloud log line: its parser must follow CloudReport.line."""
    from demo.node_process import node_reports
    from folk_ros.ros.work import STAGES, CloudReport

    timings = {k: 1.5 * (i + 1) for i, k in enumerate(STAGES)}
    report = CloudReport(n_input=150_000, n_nonfinite=12, n_segmented=99_000, n_instances=7, timings=timings)
    log = f"[INFO] [1.2] [folk_demo.folk_segmenter]: ready\n[INFO] [3.4] [x]: {report.line(3, 1)}\n"
    (parsed,) = node_reports(log).values()
    assert (parsed.processed, parsed.points, parsed.segmented, parsed.instances) == (3, 150_000, 99_000, 7)
    assert parsed.stages_ms == timings and parsed.total_ms == pytest.approx(sum(timings.values()), abs=0.05)


# ---------------------------------------------------------------------------------------------
# the demo


@pytest.mark.parametrize("bundle, reason", [("nowhere", "not found"), ("empty", "manifest.json is missing")])
def test_missing_bundle_is_one_line_and_exit_code_1(tmp_path, bundle, reason):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "demo", "--bundle", str(tmp_path / bundle),
                           "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and bundle in lines[0] and reason in lines[0] and "--bundle" in lines[0], lines
    assert not (tmp_path / "data").exists()   # checked before any scene is generated


def _demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    bundle = tmp_path / "bundle"
    if not bundle.exists():
        make_untrained_bundle(bundle)
    args = [sys.executable, "-m", "demo", "--bundle", str(bundle), "--scenes", "1", "--frames", "60",
            "--seed", "3", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--vocabulary", "chair, table,trash can", "--new-vocabulary", "mug,fire extinguisher",
            "--device", "cpu", "--threads", "1", "--namespace", "/demo_test",
            "-p", "score_threshold:=0.0", "-p", "min_points:=5", "-p", "max_points:=20000", *extra]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def _check_clouds(doc: dict, stdout: str, num_clouds: int) -> None:
    """The vocabulary change, and table (stdout), JSON and renders agreeing, cloud by cloud."""
    import matplotlib.image

    old, new = ["chair", "table", "trash can"], ["mug", "fire extinguisher"]
    clouds = doc["clouds"]
    assert len(clouds) == num_clouds
    change = doc["vocabulary_change"]
    assert change["old"] == old and change["new"] == new and change["after_cloud"] == num_clouds // 2
    assert change["service"] == "/demo_test/folk_segmenter/set_parameters"
    for rec in clouds:
        after = rec["position"] > change["after_cloud"]
        assert rec["after_vocabulary_change"] == after
        vocab = new if after else old
        assert rec["vocabulary"] == vocab
        assert rec["instances"], "score_threshold 0: the untrained bundle labels at least one proposal"
        assert {r["label"] for r in rec["instances"]} <= set(vocab)
        assert rec["frame_id"] == "map" and rec["round_trip_ms"] > 0 and rec["segmented_points"] <= 20000
        assert {"convert", "proposals", "student", "classify", "publish"} <= set(rec["node_ms"])
        # table rows printed for exactly these instances
        block = stdout.split(f"cloud {rec['position']}/{num_clouds}:")[1].split("render:")[0]
        rows = [line for line in block.splitlines() if re.match(r"\s+\d+\s+\S", line)]
        assert len(rows) == len(rec["instances"])
        for row, r in zip(rows, rec["instances"]):
            assert row.split()[0] == str(r["id"]) and r["label"] in row and f"{r['score']:.3f}" in row
            assert row.split()[-1] == f"{r['points']:,}"
        assert "latency ms: publish -> instances" in block
        # render: a real PNG, with one "label score" text per instance
        img = matplotlib.image.imread(rec["png"])
        assert img.shape[:2] == (700, 1500) and img[..., :3].std() > 0.05
        assert rec["drawn_labels"] == [f"{r['label']} {r['score']:.2f}" for r in rec["instances"]]
        for r in rec["instances"]:
            assert 0 < r["labeled_points"] <= r["points"] <= rec["points"]
            assert all(lo <= hi for lo, hi in zip(r["bbox_min"], r["bbox_max"]))


def _check_map_mode(out: Path, stdout: str, num_clouds: int) -> None:
    """The second part: the walk-through in map mode (stable ids, query, renders, saved map)."""
    maps = json.loads((out / "map_instances.json").read_text())
    clouds = maps["clouds"]
    assert len(clouds) == num_clouds
    assert clouds[0]["instances"] and all(r["new"] for r in clouds[0]["instances"])
    seen = set()
    for rec in clouds:
        ids = [r["id"] for r in rec["instances"]]
        assert len(set(ids)) == len(ids)
        assert all(r["new"] == (r["id"] not in seen) for r in rec["instances"])
        seen |= set(ids)
        assert rec["query"]["answers"] and all(0.0 <= a["score"] <= 1.0 for a in rec["query"]["answers"])
        assert rec["round_trip_ms"] > 0 and {"change", "associate"} <= set(rec["node_ms"])
        assert Path(rec["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"map cloud {rec['position']}/{num_clouds}:" in stdout
    node_log = (out / "node_map.log").read_text()
    ending = stdout[stdout.find("~/save_map:"):] + "\n--- node_map.log ---\n" + node_log[-3000:]
    assert "~/save_map: saved" in stdout and (out / "maps" / "walk.map").is_file(), ending
    assert "map-mode node stopped (SIGINT), exit code 0" in stdout, ending
    assert "map file saved on shutdown: True" in stdout and (out / "maps" / "demo.map").is_file(), ending
    assert "mode map" in node_log and "shut down" in node_log, ending
    assert "Traceback" not in node_log and "Failed to publish" not in node_log, ending
    assert re.search(rf"map saved on shutdown: \d+ instances to {re.escape(str(out / 'maps' / 'demo.map'))}",
                     node_log), ending


@pytest.mark.ros
@pytest.mark.slow    # about 80 s on 2 cores
def test_demo_end_to_end(tmp_path):
    proc = _demo(tmp_path)
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the scene set: summary and preview as before
    rows = json.loads((out / "summary.json").read_text())
    assert len(rows) == 1 and rows[0]["frames"] == 60 and rows[0]["instances"] >= 8
    assert len(rows[0]["bag_cloud_points"]) == 2 and rows[0]["bag_cloud_points"][-1] > 1000
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "instances per class" in proc.stdout
    # the live part: two clouds, the vocabulary set in between
    doc = json.loads((out / "instances.json").read_text())
    assert [c["bag_index"] for c in doc["clouds"]] == [0, 1]
    _check_clouds(doc, proc.stdout, 2)
    assert ">>> vocabulary set through /demo_test/folk_segmenter/set_parameters: mug, fire extinguisher" \
        in proc.stdout
    assert "node stopped (SIGINT), exit code 0" in proc.stdout
    node_log = (out / "node.log").read_text()
    assert "live parameters now: vocabulary of 2 names ['mug', 'fire extinguisher']" in node_log
    assert "shut down" in node_log and "Traceback" not in node_log
    _check_map_mode(out, proc.stdout, 2)

    # again, reusing the scene, with one cloud: it is played before and after the change
    meta = next((tmp_path / "data").glob("*/synth_meta.json"))
    stamp = meta.stat().st_mtime_ns
    again = _demo(tmp_path, "--clouds", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert meta.stat().st_mtime_ns == stamp
    doc = json.loads((out / "instances.json").read_text())
    assert [c["bag_index"] for c in doc["clouds"]] == [0, 0] and "played twice" in again.stdout
    _check_clouds(doc, again.stdout, 2)

    # the node refuses to start (a parameter out of range): its one-line error, exit code 1, no waiting
    broken = _demo(tmp_path, "-p", "max_instances:=0")
    assert broken.returncode == 1
    assert "[ERROR]" in broken.stderr and "bad parameter" in broken.stderr and "max_instances" in broken.stderr
    assert "Traceback" not in broken.stderr and "instances.json" not in broken.stdout
