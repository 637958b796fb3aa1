"""The folk_segmenter node's vocabulary text at start-up, over real rclpy: the text store across a restart
(read back without CLIP; names it lacks encoded right after ready, clouds waiting for them) and a CLIP that
cannot load (one clear error per cloud, no labels of other names, a clean exit). Each test starts its own node
in its own namespace (test/ros_harness.py), with the UNTRAINED test bundle.
"""

from __future__ import annotations

import shutil
import time

import pytest

from folk_ros.ros.node import TOPIC_INSTANCES
from test.fixtures import make_untrained_bundle
from test.ros_harness import ready_probe, room_msg, running_node


@pytest.mark.ros
def test_a_restart_reads_the_text_store_and_loads_clip_for_new_names(tmp_path):
    from rclpy.parameter import Parameter
    store = ["-r", "__ns:=/restart", "-p", f"text_cache_dir:={tmp_path / 'text'}"]   # alone on its topics
    with running_node(tmp_path, store) as first, ready_probe(first, "/restart") as probe:
        probe.wait_until(lambda: "ready:" in first.log(), what="the ready line")
        assert "read from the text store" not in first.log()  # a new store: ready first, then CLIP encodes
        assert "names the text store lacks: CLIP loads and encodes them now" in first.log()
        probe.wait_until(lambda: "vocabulary text encoded" in first.log(), what="the encoded vocabulary")
        out = probe.result(probe.publish(room_msg(seed=2)[0]), topics=(TOPIC_INSTANCES,))[TOPIC_INSTANCES]
    assert out.instances and out.vocabulary     # the first cloud waited for the text: labeled
    assert list((tmp_path / "text").glob("*.safetensors"))
    with running_node(tmp_path, store) as again, ready_probe(again, "/restart") as probe:
        probe.wait_until(lambda: "vocabulary text read from the text store; CLIP loads in the background"
                         in again.log(), what="the text store's log line")
        change = [Parameter("vocabulary", value=["mug", "fire extinguisher"])]     # new names: CLIP's work
        assert all(r.successful for r in probe.call(lambda: probe.params.set_parameters(change)).results)
        inst = probe.result(probe.publish(room_msg(seed=3)[0]), topics=(TOPIC_INSTANCES,))[TOPIC_INSTANCES]
    assert list(inst.vocabulary) == ["mug", "fire extinguisher"] and inst.instances
    assert "CLIP failed" not in again.log()


@pytest.mark.ros
def test_new_names_with_a_clip_that_cannot_load_fail_clouds_clearly_and_the_node_lives_on(tmp_path):
    """Ready comes before CLIP when the store lacks the names; a CLIP that then fails to load is one clear error
    per cloud (no labels of other names, no crash), and Ctrl-C still exits cleanly."""
    make_untrained_bundle(tmp_path / "bundle")
    broken = tmp_path / "broken_clip"
    shutil.copytree(tmp_path / "bundle" / "clip", broken)
    (broken / "open_clip_model.safetensors").write_bytes(b"not a safetensors file")
    args = ["-r", "__ns:=/clip_fails", "-p", f"clip_model:={broken}", "-p", f"text_cache_dir:={tmp_path / 'text'}"]
    with running_node(tmp_path, args) as node, ready_probe(node, "/clip_fails") as probe:  # alone on its topics
        probe.wait_until(lambda: "cannot encode the vocabulary" in node.log(), what="the encoding error")
        assert "CLIP failed to load" not in node.log()        # the load's own error came first
        stamp = probe.publish(room_msg(seed=4)[0])
        probe.wait_until(lambda: "CLIP failed to load" in node.log() or node.proc.poll() is not None,
                         what="the cloud's error")                  # the kept error, raised to the cloud
        time.sleep(1.0)                                             # a window for outputs that must not come
        assert node.proc.poll() is None and stamp not in probe.outputs
    assert node.proc.returncode == 0, node.log()[-4000:]
    assert "Traceback" in node.log()                                # the first error of a kind is traced
