"""The per-cloud outputs (folk_ros/ros/cloud_outputs.py): instances mapped back to the input points, and the
labeled cloud. Pure functions, no node."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch
from std_msgs.msg import Header

from folk_ros.core.cloud import fit_point_budget
from folk_ros.core.segmenter import Instances
from folk_ros.core.voxel_masks import VoxelMasks
from folk_ros.ros.cloud_outputs import build_outputs, instance_points, labeled_cloud_msg, voxel_labels
from folk_ros.ros.conversions import cloud_from_msg, cloud_to_msg
from folk_ros.ros.parameters import PARAMETERS, read_settings
from test.fixtures import box_room_cloud
from test.ros_harness import cloud_fields


def test_fit_point_budget_and_mapping_back():
    cloud, _ = box_room_cloud()
    same, inverse, voxel = fit_point_budget(cloud, 0, 0.02)
    assert same is cloud and inverse is None and voxel == 0.0
    sub, inverse, voxel = fit_point_budget(cloud, 2000, 0.02)
    assert len(sub) <= 2000 and voxel > 0.02 and inverse.shape == (len(cloud),)
    # every input point lies in the voxel of the point that represents it
    np.testing.assert_array_equal(np.floor(sub.xyz[inverse] / voxel), np.floor(cloud.xyz / voxel))

    rng = np.random.default_rng(0)
    masks = rng.random((3, len(sub))) < 0.3
    inst = Instances(voxel_masks=VoxelMasks.from_dense(torch.from_numpy(masks)),   # a voxel per point
                     inverse_map=np.arange(len(sub)), label_indices=np.array([2, 0, 1]),
                     scores=np.array([0.9, 0.5, 0.2], np.float32),
                     label_probs=np.ones(3, np.float32), proposal_scores=np.ones(3, np.float32),
                     embeddings=np.zeros((3, 4), np.float32), boxes=np.zeros((3, 2, 3), np.float32),
                     centroids=np.zeros((3, 3), np.float32), vocabulary=("a", "b", "c"))
    found = instance_points(inst, inverse, cloud.xyz)
    for i in range(3):   # an input point belongs to an instance iff its voxel's point does
        np.testing.assert_array_equal(found.point_ids[i], np.flatnonzero(masks[i][inverse]))
    instance_id, label_index, score = (a[inverse] for a in voxel_labels(inst.voxel_masks, inst.label_indices,
                                                                        inst.scores))
    assert instance_id.shape == (len(cloud),)
    first = instance_id == 0    # instance 0 has the best score: it wins every overlap
    np.testing.assert_array_equal(first, masks[0][inverse])
    assert (label_index[first] == 2).all() and np.allclose(score[first], 0.9)
    for i in range(3):   # boxes and centroids over every input point of the instance
        points = cloud.xyz[found.point_ids[i]]
        np.testing.assert_allclose(found.centroids[i], points.mean(0), atol=1e-5)
        np.testing.assert_array_equal(found.boxes_min[i], points.min(0))
        np.testing.assert_array_equal(found.boxes_max[i], points.max(0))
    direct = instance_points(inst, None, sub.xyz)     # not downsampled: masks are over the input points
    np.testing.assert_array_equal(direct.point_ids[1], np.flatnonzero(masks[1]))
    np.testing.assert_array_equal(direct.centroids, inst.centroids)   # the Segmenter's own geometry
    np.testing.assert_array_equal(direct.boxes_min, inst.boxes[:, 0])

    # the three messages: the labeled cloud's points take their voxel's labels, the instances their points
    header = Header(frame_id="map")
    conv = cloud_from_msg(cloud_to_msg(cloud.xyz, None, header))
    settings = read_settings({p.name: p.default for p in PARAMETERS})
    outputs = build_outputs(header, conv, len(cloud), inst, inverse, settings)
    np.testing.assert_array_equal(cloud_fields(outputs.labeled_cloud)["instance_id"], instance_id)
    assert [list(i.point_indices) for i in outputs.instances.instances] == [ids.tolist() for ids in found.point_ids]
    # the node's worker makes the labeled cloud on a helper thread: the same three messages
    with ThreadPoolExecutor(max_workers=1) as helper:
        helped = build_outputs(header, conv, len(cloud), inst, inverse, settings, helper)
        unlabeled = build_outputs(header, conv, len(cloud), inst, inverse,
                                  replace(settings, publish_labeled_cloud=False), helper)
    for name in ("instances", "markers", "labeled_cloud"):
        assert getattr(helped, name) == getattr(outputs, name), name      # messages compare field by field
    assert unlabeled.labeled_cloud is None


def test_voxel_labels():
    # 2 masks over 4 voxels
    masks = VoxelMasks.from_dense(torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool))
    inst, label, score = voxel_labels(masks, np.array([4, -1]), np.array([0.5, 0.9]))
    assert inst.tolist() == [0, 1, 1, -1]  # voxel 1 is in both: the higher score (instance 1) wins
    assert label.tolist() == [4, -1, -1, -1]
    np.testing.assert_allclose(score, [0.5, 0.9, 0.9, 0.0])
    inst, _, _ = voxel_labels(masks, np.array([4, 1]), np.array([0.7, 0.7]))
    assert inst.tolist() == [0, 1, 1, -1]  # equal scores: the later instance
    # no instance at all (every proposal under the score threshold): every voxel unlabeled
    inst, label, score = voxel_labels(VoxelMasks.empty(4), np.zeros(0, int), np.zeros(0, np.float32))
    assert inst.tolist() == label.tolist() == [-1] * 4 and score.tolist() == [0.0] * 4
    assert (inst.dtype, label.dtype, score.dtype) == (np.int32, np.int32, np.float32)
    with pytest.raises(ValueError, match="2 masks"):
        voxel_labels(masks, np.array([4]), np.array([0.5, 0.9]))


def test_labeled_cloud_keeps_input_rows_with_and_without_dropped_points():
    xyz = np.random.default_rng(0).random((6, 3)).astype(np.float32)
    iid, lab, score = np.array([0, -1, 1, 1, 0, 0]), np.array([2, -1, 0, 0, 2, 2]), np.linspace(0, 1, 6)
    for dropped in ([], [3]):
        xyz_in = xyz.copy()
        xyz_in[dropped] = np.nan
        conv = cloud_from_msg(cloud_to_msg(xyz_in, None, Header()))
        kept = len(conv.indices)
        fields = cloud_fields(labeled_cloud_msg(Header(), conv, 6, iid[:kept], lab[:kept], score[:kept]))
        assert fields["instance_id"].dtype == np.int32 and fields["score"].dtype == np.float32
        np.testing.assert_array_equal(fields["instance_id"][conv.indices], iid[:kept])
        np.testing.assert_array_equal(fields["label_index"][conv.indices], lab[:kept])
        np.testing.assert_allclose(fields["score"][conv.indices], score[:kept], rtol=1e-6)
        np.testing.assert_array_equal(np.c_[fields["x"], fields["y"], fields["z"]][conv.indices], xyz[conv.indices])
        if dropped:
            assert fields["instance_id"][3] == -1 and fields["label_index"][3] == -1 and fields["score"][3] == 0
            assert np.isnan(fields["x"][3])
