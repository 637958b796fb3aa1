"""folk_ros.ros.conversions, markers and message_parts: PointCloud2 <-> numpy, InstanceArray and MarkerArray,
without a node."""

import time

import numpy as np
import pytest

rclpy_serialization = pytest.importorskip("rclpy.serialization")
from builtin_interfaces.msg import Time  # noqa: E402
from folk_ros_interfaces.msg import InstanceArray  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from folk_ros.core.pointcloud2 import CloudFormatError  # noqa: E402
from folk_ros.ros.conversions import (  # noqa: E402
    UNLABELED_COLOR, cloud_from_msg, cloud_to_msg, instances_to_msg,
    label_colors, packed_label_colors)
from folk_ros.ros.markers import markers_from_instances  # noqa: E402

_DATATYPE = {np.dtype(code): datatype for datatype, code in
             enumerate(["i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8"], start=1)}


def _header(frame="map", sec=12, nanosec=345):
    return Header(frame_id=frame, stamp=Time(sec=sec, nanosec=nanosec))


def _records(columns, height, width, point_step=None, offsets=None):
    """A (height, width) structured array with the given (name, dtype, (H*W,...) values) columns."""
    dtype = np.dtype({"names": [c[0] for c in columns], "formats": [c[1] for c in columns],
                      **({"offsets": offsets} if offsets else {}),
                      **({"itemsize": point_step} if point_step else {})})
    rec = np.zeros(height * width, dtype)
    for name, _, values in columns:
        rec[name] = values
    return rec.reshape(height, width)


def _msg(rec, row_pad=0, bigendian=False, fields=None):
    """A PointCloud2 holding ``rec`` (native little-endian structured array), padding each row."""
    height, width = rec.shape
    if bigendian:
        rec = rec.byteswap()  # same dtype, bytes of every field reversed -> big-endian payload
    rows = np.frombuffer(rec.tobytes(), np.uint8).reshape(height, width * rec.dtype.itemsize)
    data = np.concatenate([rows, np.full((height, row_pad), 0xAB, np.uint8)], axis=1)
    if fields is None:
        fields = [PointField(name=n, offset=rec.dtype.fields[n][1], datatype=_DATATYPE[rec.dtype.fields[n][0]],
                             count=1) for n in rec.dtype.names]
    return PointCloud2(header=_header(), height=height, width=width, fields=fields, is_bigendian=bigendian,
                       point_step=rec.dtype.itemsize, row_step=width * rec.dtype.itemsize + row_pad,
                       data=data.tobytes(), is_dense=False)


def _pack(rgb):
    rgb = rgb.astype(np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


@pytest.fixture
def pts():
    rng = np.random.default_rng(0)
    return rng.normal(size=(12, 3)).astype(np.float32), rng.integers(0, 256, (12, 3), dtype=np.uint8)


@pytest.mark.parametrize("xyz_type", ["f4", "f8"])
@pytest.mark.parametrize("rgb_type", ["f4", "u4"])
def test_packed_rgb_float32_and_uint32_with_float32_and_float64_xyz(pts, xyz_type, rgb_type):
    xyz, rgb = pts
    packed = _pack(rgb)
    rec = _records([("x", xyz_type, xyz[:, 0]), ("y", xyz_type, xyz[:, 1]), ("z", xyz_type, xyz[:, 2]),
                    ("rgb", rgb_type, packed.view(np.float32) if rgb_type == "f4" else packed)], 1, 12)
    out = cloud_from_msg(_msg(rec))
    np.testing.assert_array_equal(out.cloud.xyz, xyz)
    np.testing.assert_allclose(out.cloud.rgb, rgb / 255.0, atol=1e-6)
    assert out.had_color and out.dropped_nonfinite == 0
    np.testing.assert_array_equal(out.indices, np.arange(12))
    assert out.indices.dtype == np.int64


def test_rgba_ignores_alpha(pts):
    xyz, rgb = pts
    rgba = _pack(rgb) | np.uint32(0x7F000000)
    rec = _records([("x", "f4", xyz[:, 0]), ("y", "f4", xyz[:, 1]), ("z", "f4", xyz[:, 2]),
                    ("rgba", "u4", rgba)], 1, 12)
    np.testing.assert_allclose(cloud_from_msg(_msg(rec)).cloud.rgb, rgb / 255.0, atol=1e-6)


@pytest.mark.parametrize("kind, scale", [("u1", 1), ("f4", 1 / 255.0), ("f4", 1.0)])
def test_separate_r_g_b_channels(pts, kind, scale):
    """uint8 is 0..255; floats are 0..1 unless a value exceeds 1, then 0..255."""
    xyz, rgb = pts
    values = rgb if kind == "u1" else rgb.astype(np.float32) * np.float32(scale)
    rec = _records([("x", "f4", xyz[:, 0]), ("y", "f4", xyz[:, 1]), ("z", "f4", xyz[:, 2]),
                    ("b", kind, values[:, 2]), ("g", kind, values[:, 1]), ("r", kind, values[:, 0])], 1, 12)
    out = cloud_from_msg(_msg(rec))
    assert out.had_color
    np.testing.assert_allclose(out.cloud.rgb, rgb / 255.0, atol=1e-6)


def test_no_colour_uses_default(pts):
    xyz, _ = pts
    rec = _records([("x", "f4", xyz[:, 0]), ("y", "f4", xyz[:, 1]), ("z", "f4", xyz[:, 2]),
                    ("intensity", "f4", 1.0)], 3, 4)
    out = cloud_from_msg(_msg(rec), default_rgb=(0.1, 0.2, 0.3))
    assert not out.had_color
    np.testing.assert_allclose(out.cloud.rgb, np.tile([0.1, 0.2, 0.3], (12, 1)), rtol=1e-6)


@pytest.mark.parametrize("bigendian", [False, True])
def test_padded_point_step_row_step_organised_and_byte_order(pts, bigendian):
    """2 rows x 6 points, 40-byte points with gaps, 13 pad bytes per row, fields out of order."""
    xyz, rgb = pts
    rec = _records([("z", "f8", xyz[:, 2]), ("rgb", "u4", _pack(rgb)), ("x", "f4", xyz[:, 0]),
                    ("y", "f4", xyz[:, 1]), ("intensity", "u2", 7)], 2, 6, point_step=40,
                   offsets=[4, 16, 24, 32, 36])
    msg = _msg(rec, row_pad=13, bigendian=bigendian)
    assert msg.row_step == 6 * 40 + 13 and msg.height == 2
    out = cloud_from_msg(msg)
    np.testing.assert_array_equal(out.cloud.xyz, xyz)
    np.testing.assert_allclose(out.cloud.rgb, rgb / 255.0, atol=1e-6)
    np.testing.assert_array_equal(out.indices, np.arange(12))


def test_nonfinite_points_dropped_with_row_major_indices(pts):
    xyz, rgb = pts
    xyz = xyz.copy()
    bad = [1, 6, 7, 11]  # row 0 col 1, row 1 cols 0-1, row 1 col 5 of a 2 x 6 cloud
    xyz[1, 0], xyz[6, 2], xyz[7, 1], xyz[11] = np.nan, np.inf, -np.inf, np.nan
    rec = _records([("x", "f4", xyz[:, 0]), ("y", "f4", xyz[:, 1]), ("z", "f4", xyz[:, 2]),
                    ("rgb", "u4", _pack(rgb))], 2, 6)
    out = cloud_from_msg(_msg(rec, row_pad=3))
    kept = np.setdiff1d(np.arange(12), bad)
    np.testing.assert_array_equal(out.indices, kept)
    assert out.dropped_nonfinite == 4
    np.testing.assert_array_equal(out.cloud.xyz, xyz[kept])
    np.testing.assert_allclose(out.cloud.rgb, rgb[kept] / 255.0, atol=1e-6)


def test_float64_beyond_float32_range_is_dropped():
    rec = _records([("x", "f8", [0.0, 1e300]), ("y", "f8", 0.0), ("z", "f8", 0.0)], 1, 2)
    out = cloud_from_msg(_msg(rec))
    np.testing.assert_array_equal(out.indices, [0])


def test_empty_and_all_nan_clouds():
    empty = _msg(_records([("x", "f4", 0.0), ("y", "f4", 0.0), ("z", "f4", 0.0)], 1, 0))
    out = cloud_from_msg(empty)
    assert len(out.cloud) == 0 and out.indices.shape == (0,)
    nan = _msg(_records([("x", "f4", np.nan), ("y", "f4", 0.0), ("z", "f4", 0.0)], 2, 3))
    out = cloud_from_msg(nan)
    assert len(out.cloud) == 0 and out.dropped_nonfinite == 6


def _f(name, offset, datatype=PointField.FLOAT32, count=1):
    return PointField(name=name, offset=offset, datatype=datatype, count=count)


_XYZ = [_f("x", 0), _f("y", 4), _f("z", 8)]


@pytest.mark.parametrize("fields, point_step, row_step, nbytes, match", [
    ([_f("x", 0), _f("y", 4)], 16, 32, 32, "no 'z' field"),
    ([_f("x", 0, PointField.INT32), _f("y", 4), _f("z", 8)], 16, 32, 32, "'x' has datatype INT32"),
    ([_f("x", 0), _f("y", 4), _f("z", 8, PointField.UINT8)], 16, 32, 32, "'z' has datatype UINT8"),
    ([_f("x", 0, count=3), _f("y", 12), _f("z", 16)], 20, 40, 40, "'x' has count 3"),
    (_XYZ + [_f("x", 12)], 16, 32, 32, "duplicate fields: x"),
    (_XYZ + [_f("rgb", 10)], 16, 32, 32, "'z' and 'rgb' overlap"),
    (_XYZ + [_f("rgb", 12)], 14, 28, 28, "point_step 14 is too small: field 'rgb' ends at byte 16"),
    (_XYZ, 12, 24, 23, "truncated: row_step \\* height = 24 \\* 1 = 24 bytes but data has 23"),
    (_XYZ, 12, 20, 24, "width \\* point_step = 2 \\* 12 = 24 exceeds row_step 20"),
    (_XYZ + [_f("rgb", 12, PointField.UINT8)], 16, 32, 32, "'rgb' has datatype UINT8"),
    (_XYZ + [_f("r", 12, PointField.UINT8), _f("g", 13, PointField.UINT8)], 16, 32, 32, "not b"),
    (_XYZ + [_f("r", 12, PointField.UINT8), _f("g", 13, PointField.UINT8), _f("b", 14, PointField.INT8)],
     16, 32, 32, "share one datatype"),
])
def test_invalid_layouts_raise_one_clear_error(fields, point_step, row_step, nbytes, match):
    msg = PointCloud2(header=_header(), height=1, width=2, fields=fields, point_step=point_step,
                      row_step=row_step, data=bytes(nbytes))
    with pytest.raises(CloudFormatError, match=match) as err:
        cloud_from_msg(msg)
    assert isinstance(err.value, ValueError) and str(err.value).startswith("PointCloud2")


def test_cloud_to_msg_round_trip_with_extra_fields_and_serialization(pts):
    xyz, rgb = pts
    extras = {"instance_id": np.arange(12, dtype=np.int32) - 1, "label_index": np.full(12, 3, np.int32),
              "score": np.linspace(0, 1, 12).astype(np.float32)}
    msg = cloud_to_msg(xyz, rgb, _header("cam", 7, 9), extras)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "instance_id", "label_index", "score"]
    assert [f.datatype for f in msg.fields] == [7, 7, 7, 7, 5, 5, 7]
    assert msg.point_step == 28 and msg.row_step == 28 * 12 and msg.is_dense and not msg.is_bigendian
    back = rclpy_serialization.deserialize_message(rclpy_serialization.serialize_message(msg), PointCloud2)
    assert back.header.frame_id == "cam" and (back.header.stamp.sec, back.header.stamp.nanosec) == (7, 9)
    out = cloud_from_msg(back)
    np.testing.assert_array_equal(out.cloud.xyz, xyz)
    np.testing.assert_allclose(out.cloud.rgb, rgb / 255.0, atol=1e-6)
    rec = np.frombuffer(bytes(back.data), np.dtype({"names": list(extras), "formats": ["<i4", "<i4", "<f4"],
                                                    "offsets": [16, 20, 24], "itemsize": 28}))
    for name, values in extras.items():
        np.testing.assert_array_equal(rec[name], values)
    rgb_u32 = rgb.astype(np.uint32)                                  # colours packed already: the same bytes
    packed = (rgb_u32[:, 0] << 16) | (rgb_u32[:, 1] << 8) | rgb_u32[:, 2] | np.uint32(0xFF000000)
    assert bytes(cloud_to_msg(xyz, packed, _header("cam", 7, 9), extras).data) == bytes(msg.data)


def test_cloud_to_msg_rejects_bad_extras(pts):
    xyz, rgb = pts
    with pytest.raises(ValueError, match="shape \\(12,\\)"):
        cloud_to_msg(xyz, rgb, _header(), {"score": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="clashes"):
        cloud_to_msg(xyz, rgb, _header(), {"rgb": np.zeros(12, np.float32)})
    with pytest.raises(ValueError, match="cannot hold"):
        cloud_to_msg(xyz, rgb, _header(), {"big": np.zeros(12, np.int64)})


@pytest.mark.parametrize("n", [200_000, 5_000_000])
def test_large_cloud_conversion(n):
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    xyz[::1000, 1] = np.nan
    msg = cloud_to_msg(xyz, rng.integers(0, 256, (n, 3), dtype=np.uint8), _header())
    start = time.perf_counter()
    out = cloud_from_msg(msg)
    print(f"\ncloud_from_msg: {n} points in {time.perf_counter() - start:.3f} s")
    assert len(out.cloud) == n - len(range(0, n, 1000))
    np.testing.assert_array_equal(out.cloud.xyz[:5], xyz[1:6])


def test_label_colors_fixed_palette():
    c = label_colors(np.array([0, 1, 20, -1, 0]))
    assert c.shape == (5, 3) and c.dtype == np.uint8
    np.testing.assert_array_equal(c[0], c[4])
    np.testing.assert_array_equal(c[0], c[2])  # palette of 20 wraps
    assert tuple(c[3]) == UNLABELED_COLOR and not np.array_equal(c[0], c[1])
    for labels in (np.array([0, 1, 20, -1, 0]), np.array([-7, 10 ** 6, 3]), np.zeros(0, np.int32)):  # also wide ones
        c = label_colors(labels).astype(np.uint32)
        np.testing.assert_array_equal(packed_label_colors(labels), (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2])
    assert tuple(label_colors(np.array([-7, 10 ** 6 + 20]))[0]) == UNLABELED_COLOR
    with pytest.raises(ValueError, match="must be integers"):
        packed_label_colors(np.array([0.5]))


def test_instances_to_msg_contents_and_serialization():
    vocab = ["chair", "table", "mug"]
    points = [np.array([0, 5, 9]), np.array([2**32 - 1])]
    msg = instances_to_msg(_header("odom", 3, 4), vocab, points, np.array([2, -1]), np.array([0.87, 0.4]),
                           np.array([[1, 2, 3], [4, 5, 6]]), np.zeros((2, 3)), np.ones((2, 3)))
    back = rclpy_serialization.deserialize_message(rclpy_serialization.serialize_message(msg), InstanceArray)
    assert back.header.frame_id == "odom" and (back.header.stamp.sec, back.header.stamp.nanosec) == (3, 4)
    assert list(back.vocabulary) == vocab
    a, b = back.instances
    assert (a.id, a.label, a.label_index, b.id, b.label, b.label_index) == (0, "mug", 2, 1, "", -1)
    assert a.score == pytest.approx(0.87) and list(a.point_indices) == [0, 5, 9]
    assert list(b.point_indices) == [2**32 - 1]
    assert (a.centroid.x, a.centroid.y, a.centroid.z, b.bbox_max.z) == (1, 2, 3, 1)
    with pytest.raises(ValueError, match="label_indices must lie in"):
        instances_to_msg(_header(), vocab, points, np.array([3, 0]), np.ones(2), np.zeros((2, 3)),
                         np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="point indices of instance 0"):
        instances_to_msg(_header(), vocab, [np.array([-1]), np.array([0])], np.array([0, 0]), np.ones(2),
                         np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize("box_style, box_type", [("wire", Marker.LINE_LIST), ("cube", Marker.CUBE)])
def test_markers_from_instances(box_style, box_type):
    bmin = np.array([[0, 0, 0], [1, 1, 1]], float)
    bmax = bmin + [[1, 2, 3], [0.5, 0.5, 0.5]]
    point_sets = [np.zeros((5000, 3)), np.ones((3, 3))]
    msg = markers_from_instances(_header("map", 8, 1), ["chair", ""], np.array([0.873, 0.5]), bmin, bmax,
                                 label_colors(np.array([0, -1])), 1.5, namespace="ns", point_sets=point_sets,
                                 box_style=box_style, max_marker_points=1000)
    built = msg.markers[1:]   # parts alike in every marker of a kind are made once; no two share one set per marker
    own = [("points", built), ("colors", built), ("pose", [m for m in built if m.ns == "ns/labels"])]
    if box_style == "cube":
        own += [(part, [m for m in built if m.ns == "ns/boxes"]) for part in ("pose", "scale", "color")]
    for part, group in own:
        assert len({id(getattr(m, part)) for m in group}) == len(group), part
    back = rclpy_serialization.deserialize_message(rclpy_serialization.serialize_message(msg), MarkerArray)
    markers = back.markers
    assert markers[0].action == Marker.DELETEALL
    assert len(markers) == 1 + 2 * 3
    assert all(m.pose.orientation.w == 1.0 for m in markers[1:] if m.type != Marker.CUBE)   # identity pose
    keys = [(m.ns, m.id) for m in markers]
    assert len(set(keys)) == len(keys)
    assert all(m.header.frame_id == "map" and (m.header.stamp.sec, m.header.stamp.nanosec) == (8, 1)
               for m in markers)
    boxes = [m for m in markers if m.ns == "ns/boxes"]
    texts = [m for m in markers if m.type == Marker.TEXT_VIEW_FACING]
    clouds = [m for m in markers if m.type == Marker.POINTS]
    assert [m.type for m in boxes] == [box_type] * 2 and [m.id for m in boxes] == [0, 1]
    assert [t.text for t in texts] == ["chair 0.87", "unlabeled 0.50"]
    assert texts[0].pose.position.z > 3.0  # above the box top
    assert all((m.lifetime.sec, m.lifetime.nanosec) == (1, 500_000_000) for m in markers[1:])
    assert len(clouds[0].points) == 1000 and len(clouds[1].points) == 3
    assert clouds[1].color.r == pytest.approx(UNLABELED_COLOR[0] / 255.0)
    if box_style == "wire":
        ends = np.array([[p.x, p.y, p.z] for p in boxes[0].points])
        assert ends.shape == (24, 3)
        np.testing.assert_allclose(ends.min(0), bmin[0])
        np.testing.assert_allclose(ends.max(0), bmax[0])
        assert (np.abs(ends[0::2] - ends[1::2]) > 0).sum(axis=1).tolist() == [1] * 12  # axis-aligned edges
    else:
        assert (boxes[0].scale.x, boxes[0].scale.y, boxes[0].scale.z) == (1, 2, 3)
        assert (boxes[0].pose.position.x, boxes[0].pose.position.z) == (0.5, 1.5)


def test_markers_with_no_instances_only_delete():
    msg = markers_from_instances(_header(), [], np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3)),
                                 np.zeros((0, 3), np.uint8), 0.0)
    assert [m.action for m in msg.markers] == [Marker.DELETEALL]


def test_oriented_boxes_in_instances_and_markers():
    """A table turned by 30 degrees: Instance.obb_pose/obb_size and the wire box follow it."""
    from folk_ros.core.geometry import OrientedBoxes
    yaw = np.radians(30)
    obb = OrientedBoxes(np.array([[1.0, 2.0, 0.4]]), np.array([[1.6, 0.8, 0.8]]), np.array([yaw]))
    bmin, bmax = obb.corners()[0].min(0)[None], obb.corners()[0].max(0)[None]
    msg = instances_to_msg(_header(), ["table"], [np.array([0])], np.array([0]), np.array([0.9]),
                           obb.center, bmin, bmax, obb=obb)
    back = rclpy_serialization.deserialize_message(rclpy_serialization.serialize_message(msg), InstanceArray)
    (inst,) = back.instances
    q = inst.obb_pose.orientation
    assert (q.x, q.y) == (0.0, 0.0) and np.degrees(2 * np.arctan2(q.z, q.w)) == pytest.approx(30.0)
    assert (inst.obb_size.x, inst.obb_size.y, inst.obb_size.z) == pytest.approx((1.6, 0.8, 0.8))
    assert (inst.obb_pose.position.x, inst.obb_pose.position.y) == (1.0, 2.0)
    plain = instances_to_msg(_header(), ["table"], [np.array([0])], np.array([0]), np.array([0.9]),
                             obb.center, bmin, bmax)                       # without obb: the axis-aligned box
    assert plain.instances[0].obb_pose.orientation.w == 1.0
    assert plain.instances[0].obb_size.x == pytest.approx(bmax[0, 0] - bmin[0, 0])
    markers = markers_from_instances(_header(), ["table"], np.array([0.9]), bmin, bmax, label_colors(np.array([0])),
                                     0.0, obb=obb)
    ends = np.array([[p.x, p.y, p.z] for p in markers.markers[1].points])
    np.testing.assert_allclose(np.unique(ends.round(9), axis=0), np.unique(obb.corners()[0].round(9), axis=0))
    edges = ends[1::2] - ends[0::2]
    lengths = np.sort(np.linalg.norm(edges, axis=1))
    np.testing.assert_allclose(lengths, np.repeat([0.8, 0.8, 1.6], 4), atol=1e-9)   # the box's own edges
    cube = markers_from_instances(_header(), ["table"], np.array([0.9]), bmin, bmax, label_colors(np.array([0])),
                                  0.0, obb=obb, box_style="cube").markers[1]
    assert cube.pose.orientation.z == pytest.approx(np.sin(yaw / 2))


def test_far_coordinates_are_recentred_and_outliers_dropped():
    """UTM-like clouds keep their precision; a stray point far away is dropped, never wrapped or collapsed."""
    from folk_ros.core.voxelize import voxelize
    rng = np.random.default_rng(0)
    local = rng.uniform(0, 5, (1000, 3))
    utm = local + [4_600_000.25, 500_000.5, 12.0]
    rec = _records([("x", "f8", utm[:, 0]), ("y", "f8", utm[:, 1]), ("z", "f8", utm[:, 2])], 1, 1000)
    out = cloud_from_msg(_msg(rec))
    assert (out.origin == np.round(out.origin)).all() and np.abs(out.origin - utm.mean(0)).max() < 5.0
    assert np.abs(out.cloud.xyz).max() < 10.0                        # small numbers: voxel indices stay small
    np.testing.assert_allclose(out.cloud.xyz + out.origin, utm, atol=1e-5)   # float32 in UTM would be 0.5 m off
    assert out.dropped_far == 0 and len(out.cloud) == 1000
    for stray in (1e9, 1e30, 171_800.0):                            # one stray point among indoor ones
        pts = np.vstack([local, [[stray, 0.0, 0.0]]])
        rec = _records([("x", "f8", pts[:, 0]), ("y", "f8", pts[:, 1]), ("z", "f8", pts[:, 2])], 1, 1001)
        out = cloud_from_msg(_msg(rec))
        assert out.dropped_far == 1 and len(out.cloud) == 1000 and not out.origin.any(), stray
        assert len(voxelize(out.cloud.xyz, 0.02).unique_map) > 100   # not one collapsed voxel
    same = cloud_from_msg(_msg(rec), origin=np.array([1.0, 2.0, 3.0]))   # a given origin is used as is
    np.testing.assert_allclose(same.cloud.xyz[0], local[0] - [1, 2, 3], atol=1e-5)
    with pytest.raises(ValueError, match="beyond the int32 voxel range"):
        voxelize(np.array([[0.0, 0.0, 0.0], [1e9, 0.0, 0.0]]), 0.02)


def test_recentred_clouds_come_back_in_float64():
    xyz = np.array([[4_600_000.123, 500_000.456, 1.0]])
    msg = cloud_to_msg(xyz, None, _header())
    assert [f.datatype for f in msg.fields[:3]] == [PointField.FLOAT64] * 3
    back = cloud_from_msg(msg)
    np.testing.assert_allclose(back.cloud.xyz.astype(np.float64) + back.origin, xyz, atol=1e-6)


def test_message_parts_are_copies_and_poses():
    """shallow_copy equals copy.copy for the templates the outputs are made from, and shares nothing set
    on the copy back into the template; pose() equals the constructor's Pose."""
    import copy

    from builtin_interfaces.msg import Duration
    from folk_ros_interfaces.msg import Instance
    from geometry_msgs.msg import Point, Pose, Quaternion

    from folk_ros.ros.message_parts import pose, shallow_copy
    for template in (Marker(header=_header(), ns="folk/boxes", lifetime=Duration(sec=1)), Instance(), Pose()):
        made = shallow_copy(template)
        assert made == copy.copy(template) and made is not template and type(made) is type(template)
    marker = Marker(ns="a")
    made = shallow_copy(marker)
    made.ns, made.points = "b", [Point(x=1.0)]
    assert marker.ns == "a" and marker.points == []
    where, turn = Point(x=1.0, y=2.0, z=3.0), Quaternion(z=0.6, w=0.8)
    assert pose(where, turn) == Pose(position=where, orientation=turn)
    assert rclpy_serialization.serialize_message(pose(where, turn)) == \
        rclpy_serialization.serialize_message(Pose(position=where, orientation=turn))
