"""The node over rclpy with the REAL model sizes (untrained weights): the official ScanNet200 Mask3D
(Res16UNet34C, 39.66 M parameters), open_clip's ViT-L-14-336 (768-d) and a 96 -> 512 -> 768 student, with
ScanNet200's 200 names as the vocabulary. The weights are random (``training.untrained_bundle --size real``,
built here in a temporary folder, ~1.9 GB on disk, ~4 GB peak RSS in the node): this pins that the real
shapes load, encode their text, segment and publish through the real node, not what they label. The costs
are measured in bench/bench_real_size.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from folk_ros.ros.node import TOPIC_INSTANCES, TOPIC_LABELED
from test.ros_harness import REPO, cloud_fields, ready_probe, room_msg, running_node
from training.data import scannet200

pytestmark = [pytest.mark.ros, pytest.mark.slow]   # about 60-90 s on 2 cores (bundle build, ViT-L load)


def test_node_runs_the_real_model_sizes_with_the_200_scannet_names(tmp_path):
    subprocess.run([sys.executable, "-m", "training.untrained_bundle", "--size", "real", "--out",
                    str(tmp_path / "bundle")], cwd=REPO, check=True, capture_output=True, text=True)
    names = list(scannet200.class_labels())
    vocabulary = tmp_path / "vocabulary.yaml"   # the 200 names through a params file, as a robot team would
    vocabulary.write_text(f"folk_segmenter:\n  ros__parameters:\n    vocabulary: {json.dumps(names)}\n")
    with running_node(tmp_path, ["--params-file", str(vocabulary)]) as node, ready_probe(node) as probe:
        msg, xyz = room_msg(seed=3)
        stamp = probe.publish(msg)
        probe.wait_until(lambda: stamp in probe.outputs and {TOPIC_INSTANCES, TOPIC_LABELED} <= set(
            probe.outputs[stamp]), timeout=180, what="the outputs of the first cloud")
        out = probe.outputs[stamp]
        instances, labeled = out[TOPIC_INSTANCES], out[TOPIC_LABELED]
        assert list(instances.vocabulary) == names
        assert {inst.label for inst in instances.instances} <= set(names)
        assert labeled.width * labeled.height == len(xyz)
        assert len(cloud_fields(labeled)["instance_id"]) == len(xyz)
        log = node.log()
    assert f"bundle {tmp_path / 'bundle'}" in log, log   # the node ran the real-size bundle, not a default
    assert "Traceback" not in log, log
