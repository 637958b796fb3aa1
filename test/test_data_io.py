"""Round trips of the dataset file formats: PLY, the ScanNet scene layout, ROS 2 bags.

Everything is hand-made here (a 30-vertex mesh, a few 32x24 frames), independent of the
synthetic generator. The rclpy test proves a real ROS 2 consumer reads our bags.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from scipy.spatial.transform import Rotation

from training.data import bag_reader, rosbag_io, scannet, scannet_writer
from training.data.ply import read_ply, write_ply
from training.data.types import BAG_TOPICS, Frame, SceneMesh

H, W = 24, 32
K = np.array([[30.0, 0.0, 15.5], [0.0, 31.0, 11.5], [0.0, 0.0, 1.0]])


def make_mesh(scene_id: str = "scene0042_00") -> SceneMesh:
    """6x5 vertex grid, 6 segments of 5 vertices; instances: chair (segments 0, 1), table (2),
    a non-ScanNet200 object (3, semantic 0); segments 4, 5 unannotated."""
    gx, gy = np.meshgrid(np.arange(6, dtype=np.float32), np.arange(5, dtype=np.float32), indexing="ij")
    vertices = np.stack([gx.ravel() * 0.1, gy.ravel() * 0.2, np.sin(gx.ravel()) * 0.05 + 0.3], axis=1)
    vertices = vertices.astype(np.float32)
    n = len(vertices)
    colors = (np.arange(n * 3).reshape(n, 3) * 7 % 256).astype(np.uint8)
    faces = []
    for i in range(5):
        for j in range(4):
            a = i * 5 + j
            faces += [[a, a + 5, a + 1], [a + 1, a + 5, a + 6]]
    segments = np.repeat(np.arange(6), 5).astype(np.int64) * 3 + 100  # non-contiguous ids
    seg_rank = np.repeat(np.arange(6), 5)
    instance_ids = np.select([seg_rank <= 1, seg_rank == 2, seg_rank == 3], [1, 2, 3], 0).astype(np.int64)
    semantic_ids = np.select([instance_ids == 1, instance_ids == 2], [2, 4], 0)  # ScanNet200 chair, table
    semantic_ids = semantic_ids.astype(np.int64)
    return SceneMesh(scene_id=scene_id, vertices=vertices, colors=colors, faces=np.array(faces, np.int64),
                     semantic_ids=semantic_ids, instance_ids=instance_ids, segments=segments,
                     instance_labels={1: "chair", 2: "table"})


def make_frame(index: int, stamp: float | None = None, with_instance: bool = True) -> Frame:
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:H, 0:W]
    color = np.stack([xx * 6 + index, yy * 8, 128 + 0 * xx], axis=-1).clip(0, 255).astype(np.uint8)
    depth = rng.uniform(0.5, 4.0, (H, W)).astype(np.float32)
    depth[:3, :5] = 0.0  # no measurement
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", [0.1 * index, -0.05 * index, 0.3 + 0.02 * index]).as_matrix()
    pose[:3, 3] = [0.1 * index, 1.0, -0.5 + 0.01 * index]
    instance = None
    if with_instance:
        instance = np.zeros((H, W), np.int32)
        instance[5:15, 4:20] = 1 + index % 3
        instance[16:, 22:] = 300
    return Frame(index=index, color=color, depth=depth, intrinsics=K.copy(), pose=pose,
                 stamp=index / 30.0 if stamp is None else stamp, instance=instance)


def assert_frame_close(got: Frame, ref: Frame, color_tol: float | None = 3.0) -> None:
    assert got.index == ref.index
    assert got.color.shape == ref.color.shape and got.color.dtype == np.uint8
    if color_tol is None:
        np.testing.assert_array_equal(got.color, ref.color)
    else:  # JPEG
        assert np.abs(got.color.astype(int) - ref.color.astype(int)).mean() < color_tol
    assert got.depth.dtype == np.float32
    np.testing.assert_allclose(got.depth, ref.depth, atol=0.0005 + 1e-6)  # 1 mm quantisation
    np.testing.assert_array_equal(got.depth == 0, ref.depth == 0)
    np.testing.assert_allclose(got.intrinsics, ref.intrinsics, atol=1e-6)
    np.testing.assert_allclose(got.pose, ref.pose, atol=1e-7)


# --------------------------------------------------------------------------- PLY


def test_ply_binary_round_trip(tmp_path):
    mesh = make_mesh()
    path = tmp_path / "m.ply"
    write_ply(path, mesh.vertices, mesh.colors, mesh.faces)
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    assert "format binary_little_endian 1.0" in header
    assert "property uchar alpha" in header and "property list uchar int vertex_indices" in header
    ply = read_ply(path)
    np.testing.assert_array_equal(ply.vertices, mesh.vertices)
    np.testing.assert_array_equal(ply.colors, mesh.colors)
    np.testing.assert_array_equal(ply.faces, mesh.faces)
    assert (ply.vertex["alpha"] == 255).all()
    with pytest.raises(ValueError, match="face indices"):
        write_ply(tmp_path / "bad.ply", mesh.vertices, mesh.colors, mesh.faces + 100)


def test_ply_ascii_with_extras_and_polygons(tmp_path):
    text = """ply
format ascii 1.0
comment hand written
element vertex 5
property float x
property float y
property float z
property float nx
property uchar red
property uchar green
property uchar blue
property int label
element face 2
property list uchar int vertex_indices
end_header
0 0 0 1 10 20 30 7
1 0 0 1 11 21 31 7
1 1 0 1 12 22 32 8
0 1 0 1 13 23 33 8
0.5 0.5 1 0 14 24 34 9
4 0 1 2 3
3 1 2 4
"""
    path = tmp_path / "a.ply"
    path.write_text(text)
    ply = read_ply(path)
    np.testing.assert_allclose(ply.vertices[4], [0.5, 0.5, 1.0])
    np.testing.assert_array_equal(ply.colors[:, 0], [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(ply.vertex["label"], [7, 7, 8, 8, 9])
    np.testing.assert_array_equal(ply.faces, [[0, 1, 2], [0, 2, 3], [1, 2, 4]])  # quad fanned


def test_ply_big_endian_binary_with_mixed_polygons(tmp_path):
    vert = np.array([(0, 0, 0, 5), (1, 0, 0, 6), (1, 1, 0, 7), (0, 1, 0, 8)],
                    dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("quality", ">f8")])
    body = vert.tobytes()
    body += np.array([3], ">u1").tobytes() + np.array([0, 1, 2], ">i4").tobytes()
    body += np.array([4], ">u1").tobytes() + np.array([0, 1, 2, 3], ">i4").tobytes()
    header = ("ply\nformat binary_big_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
              "property float z\nproperty double quality\nelement face 2\n"
              "property list uchar int vertex_indices\nend_header\n")
    path = tmp_path / "b.ply"
    path.write_bytes(header.encode() + body)
    ply = read_ply(path)
    np.testing.assert_array_equal(ply.vertices[:, :2], [[0, 0], [1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(ply.vertex["quality"], [5, 6, 7, 8])
    assert ply.colors is None
    np.testing.assert_array_equal(ply.faces, [[0, 1, 2], [0, 1, 2], [0, 2, 3]])


def test_ply_rejects_truncated(tmp_path):
    mesh = make_mesh()
    path = tmp_path / "t.ply"
    write_ply(path, mesh.vertices, mesh.colors, mesh.faces)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError):
        read_ply(path)


# --------------------------------------------------------------------------- ScanNet layout


def test_scannet_round_trip(tmp_path):
    mesh = make_mesh()
    frames = [make_frame(i) for i in range(3)]
    d = tmp_path / mesh.scene_id
    scannet_writer.write_scannet_scene(d, mesh, iter(frames))
    assert scannet.is_complete(d)
    for name in ("scene0042_00_vh_clean_2.ply", "scene0042_00_vh_clean_2.0.010000.segs.json",
                 "scene0042_00.aggregation.json", "scene0042_00.txt", "color/2.jpg", "depth/2.png",
                 "pose/2.txt", "instance/2.png", "intrinsic/intrinsic_color.txt",
                 "intrinsic/intrinsic_depth.txt",
                 "intrinsic/extrinsic_color.txt", "intrinsic/extrinsic_depth.txt"):
        assert (d / name).exists(), name
    agg = json.loads((d / "scene0042_00.aggregation.json").read_text())
    assert [(g["id"], g["objectId"], g["label"], g["segments"]) for g in agg["segGroups"]] == [
        (0, 0, "chair", [100, 103]), (1, 1, "table", [106]), (2, 2, "unknown", [109])]
    meta = scannet.read_metadata(d)
    assert meta["axisAlignment"].split() == [str(v) for v in np.eye(4).ravel().astype(int)]
    assert meta["numColorFrames"] == "3" and meta["depthWidth"] == str(W) and meta["colorHeight"] == str(H)
    assert float(meta["fx_color"]) == 30.0 and float(meta["my_depth"]) == 11.5
    depth_png = cv2.imread(str(d / "depth/1.png"), cv2.IMREAD_UNCHANGED)
    assert depth_png.dtype == np.uint16 and depth_png[0, 0] == 0
    assert np.loadtxt(d / "pose/1.txt").shape == (4, 4)

    got = scannet.read_scene_mesh(d)
    assert got.scene_id == mesh.scene_id
    np.testing.assert_array_equal(got.vertices, mesh.vertices)
    np.testing.assert_array_equal(got.colors, mesh.colors)
    np.testing.assert_array_equal(got.faces, mesh.faces)
    np.testing.assert_array_equal(got.segments, mesh.segments)
    np.testing.assert_array_equal(got.instance_ids, mesh.instance_ids)
    np.testing.assert_array_equal(got.semantic_ids, mesh.semantic_ids)
    np.testing.assert_array_equal(got.gt_encoding(), mesh.gt_encoding())
    assert got.instance_labels == {1: "chair", 2: "table"}

    read = list(scannet.read_frames(d, every=1, with_instance=True))
    assert [f.index for f in read] == [0, 1, 2]
    for g, r in zip(read, frames):
        assert_frame_close(g, r)
        np.testing.assert_array_equal(g.instance, r.instance)
        assert g.stamp == pytest.approx(r.index / 30.0)
    assert read[0].instance.dtype == np.int32


def test_benchmark_gt(tmp_path):
    mesh = make_mesh()
    scannet_writer.write_benchmark_gt(tmp_path / "gt.txt", mesh)
    gt = np.loadtxt(tmp_path / "gt.txt", dtype=np.int64)
    assert gt.shape == (30,)
    # chair instance 1, table instance 2, instance 3 with semantic 0, no instance
    assert gt[0] == 2001 and gt[10] == 4002 and gt[15] == 0 and gt[29] == 0


def test_numeric_order_every_and_bad_poses(tmp_path, caplog):
    mesh = make_mesh()
    ids = list(range(0, 101, 5))
    bad = {10, 45}

    def frames():
        for i in ids:
            f = make_frame(i, with_instance=False)
            if i in bad:
                f.pose = np.full((4, 4), -np.inf)
            yield f

    d = tmp_path / "s"
    scannet_writer.write_scannet_scene(d, mesh, frames())
    assert scannet.frame_ids(d) == ids  # numeric, not '10' < '5'
    with caplog.at_level("INFO"):
        got = [f.index for f in scannet.read_frames(d, every=1)]
    assert got == [i for i in ids if i not in bad]
    assert "skipped 2 of 21" in caplog.text
    assert [f.index for f in scannet.read_frames(d, every=2)] == [0, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert [f.index for f in scannet.read_frames(d, every=10)] == [0, 50, 100]
    with pytest.raises(ValueError, match="every"):
        next(scannet.read_frames(d, every=0))


def test_colour_depth_resolution_mismatch(tmp_path):
    """Real ScanNet: colour at a larger resolution with its own intrinsics; frames come out at depth size."""
    mesh = make_mesh()
    frame = make_frame(0, with_instance=False)
    d = tmp_path / "s"
    scannet_writer.write_scannet_scene(d, mesh, [frame])
    big = cv2.resize(frame.color, (2 * W + 8, 2 * H + 6), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(d / "color/0.jpg"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    k_color = np.eye(4)
    k_color[:3, :3] = [[61.0, 0, 35.0], [0, 62.0, 26.0], [0, 0, 1]]
    np.savetxt(d / "intrinsic/intrinsic_color.txt", k_color, fmt="%f")
    (got,) = scannet.read_frames(d, every=1)
    assert got.color.shape == (H, W, 3) and got.depth.shape == (H, W)
    np.testing.assert_allclose(got.intrinsics, K)  # depth intrinsics
    assert np.abs(got.color.astype(int) - frame.color.astype(int)).mean() < 8


def test_old_aggregation_name_label_map_and_alignment(tmp_path):
    mesh = make_mesh()
    d = tmp_path / mesh.scene_id
    scannet_writer.write_scannet_scene(d, mesh, [make_frame(0, with_instance=False)])
    agg_path = d / f"{mesh.scene_id}.aggregation.json"
    agg = json.loads(agg_path.read_text())
    agg["segGroups"][0]["label"] = "swivel chair"  # a raw ScanNet category
    agg["segGroups"][1]["label"] = "kitchen cabinets"
    agg_path.unlink()
    (d / f"{mesh.scene_id}_vh_clean.aggregation.json").write_text(json.dumps(agg))

    without_map = scannet.read_scene_mesh(d)
    np.testing.assert_array_equal(without_map.instance_ids, mesh.instance_ids)
    assert (without_map.semantic_ids == 0).all() and (without_map.gt_encoding() == 0).all()

    tsv = tmp_path / "scannetv2-labels.combined.tsv"
    tsv.write_text("id\traw_category\tcategory\tcount\tnyu40id\n2\tswivel chair\tchair\t10\t5\n"
                   "7\tkitchen cabinets\tcabinet\t3\t7\n9999\tweird\tweird\t1\t40\n")
    with_map = scannet.read_scene_mesh(d, label_map=tsv)
    np.testing.assert_array_equal(with_map.semantic_ids, np.where(mesh.instance_ids == 1, 2,
                                                                  np.where(mesh.instance_ids == 2, 7, 0)))
    assert with_map.instance_labels == {1: "chair", 2: "cabinet"}  # ids 2, 7

    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("z", 0.7).as_matrix()
    a[:3, 3] = [1.0, -2.0, 0.5]
    txt = d / f"{mesh.scene_id}.txt"
    lines = [ln for ln in txt.read_text().splitlines() if not ln.startswith("axisAlignment")]
    txt.write_text("\n".join(lines + ["axisAlignment = " + " ".join(map(str, a.ravel()))]) + "\n")
    aligned = scannet.read_scene_mesh(d, align=True)
    np.testing.assert_allclose(aligned.vertices, mesh.vertices @ a[:3, :3].T + a[:3, 3], atol=1e-6)
    (f,) = scannet.read_frames(d, align=True)
    np.testing.assert_allclose(f.pose, a @ make_frame(0).pose, atol=1e-7)


def test_write_validation_and_incomplete_marker(tmp_path):
    mesh = make_mesh()
    shared = make_mesh()
    shared.segments = shared.segments.copy()
    shared.segments[10] = shared.segments[0]  # a table vertex in a chair segment
    with pytest.raises(ValueError, match="segments spanning"):
        scannet_writer.write_scannet_scene(tmp_path / "a", shared, [])
    wrong = make_mesh()
    wrong.instance_labels = {1: "table"}
    with pytest.raises(ValueError, match="instance 1"):
        scannet_writer.write_scannet_scene(tmp_path / "b", wrong, [])

    def crashing():
        yield make_frame(0)
        raise RuntimeError("renderer died")

    d = tmp_path / "c"
    with pytest.raises(RuntimeError):
        scannet_writer.write_scannet_scene(d, mesh, crashing())
    assert not scannet.is_complete(d)
    with pytest.raises(FileExistsError):
        scannet_writer.write_scannet_scene(d, mesh, [make_frame(0)])
    scannet_writer.write_scannet_scene(d, mesh, [make_frame(0)], overwrite=True)
    assert scannet.is_complete(d)
    bigger = make_frame(1)
    bigger.intrinsics = K * 2
    bigger.intrinsics[2, 2] = 1
    with pytest.raises(ValueError, match="one camera"):
        scannet_writer.write_scannet_scene(tmp_path / "e", mesh, [make_frame(0), bigger])


# --------------------------------------------------------------------------- ROS 2 bags


def make_clouds(stamps):
    rng = np.random.default_rng(7)
    out = []
    for s in stamps:
        n = 50 + int(s * 100)
        xyz = rng.normal(size=(n, 3)).astype(np.float32)
        out.append((s, xyz, rng.integers(0, 256, (n, 3), dtype=np.uint8)))
    return out


def test_bag_round_trip(tmp_path):
    frames = [make_frame(i, stamp=100.0 + 0.1 * i, with_instance=False) for i in range(3)]
    clouds = make_clouds([100.05, 100.25])  # interleaved with the frames in time
    bag = tmp_path / "bag"
    rosbag_io.write_bag(bag, iter(frames), iter(clouds))
    assert bag_reader.bag_topics(bag) == {
        BAG_TOPICS["color"]: "sensor_msgs/msg/Image", BAG_TOPICS["depth"]: "sensor_msgs/msg/Image",
        BAG_TOPICS["camera_info"]: "sensor_msgs/msg/CameraInfo",
        BAG_TOPICS["pose"]: "geometry_msgs/msg/PoseStamped",
        BAG_TOPICS["cloud"]: "sensor_msgs/msg/PointCloud2"}

    got = list(bag_reader.read_bag_frames(bag))
    assert len(got) == 3
    for g, r in zip(got, frames):
        assert_frame_close(g, r, color_tol=None)
        assert g.stamp == pytest.approx(r.stamp, abs=1e-9)
    assert [f.index for f in bag_reader.read_bag_frames(bag, every=2)] == [0, 2]

    got_clouds = list(bag_reader.read_bag_clouds(bag))
    assert len(got_clouds) == 2
    for (s, xyz, rgb), (s0, xyz0, rgb0) in zip(got_clouds, clouds):
        assert s == pytest.approx(s0, abs=1e-9)
        np.testing.assert_array_equal(xyz, xyz0)
        np.testing.assert_array_equal(rgb, rgb0)

    with pytest.raises(FileExistsError):
        rosbag_io.write_bag(bag, frames, clouds)


def test_bag_depth_32fc1(tmp_path):
    frames = [make_frame(i, stamp=1.0 + i, with_instance=False) for i in range(2)]
    bag = tmp_path / "bag32"
    rosbag_io.write_bag(bag, frames, [], depth_encoding="32FC1")
    got = list(bag_reader.read_bag_frames(bag))
    for g, r in zip(got, frames):
        np.testing.assert_array_equal(g.depth, r.depth)  # exact in float metres
    with pytest.raises(ValueError, match="depth_encoding"):
        rosbag_io.write_bag(tmp_path / "x", frames, [], depth_encoding="mono16")


def test_bag_pairing_tolerances_and_encodings(tmp_path):
    """Hand-built bag: bgr8 colour, depth 5 ms late, one frame without pose, one without depth."""
    store = rosbag_io.typestore()
    bag = tmp_path / "manual"
    frames = [make_frame(i, stamp=10.0 + 0.1 * i, with_instance=False) for i in range(5)]
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {r: w.add_connection(BAG_TOPICS[r], rosbag_io.ROLE_TYPES[r], typestore=store)
                 for r in ("color", "depth", "camera_info", "pose")}

        def put(role, msg):
            bag_time = rosbag_io.stamp_ns(msg.header) + 1000  # receive time after the header stamp
            w.write(conns[role], bag_time, store.serialize_cdr(msg, msg.__msgtype__))

        for f in frames:
            ns = rosbag_io.seconds_to_ns(f.stamp)
            put("color", rosbag_io.image_msg(f.color[..., ::-1], "bgr8", ns, "camera"))
            if f.index != 3:
                mm = np.round(f.depth * 1000).astype(np.uint16)
                put("depth", rosbag_io.image_msg(mm, "16UC1", ns + 5_000_000, "camera"))
            if f.index != 1:
                put("pose", rosbag_io.pose_msg(f.pose, ns - 3_000_000, "map"))
            if f.index == 0:
                put("camera_info", rosbag_io.camera_info_msg(f.intrinsics, W, H, ns, "camera"))
    got = list(bag_reader.read_bag_frames(bag))
    assert [g.index for g in got] == [0, 2, 4]
    for g in got:
        assert_frame_close(g, frames[g.index], color_tol=None)
    assert list(bag_reader.read_bag_frames(bag, tolerance=0.004)) == []  # depth is 5 ms off
    with pytest.raises(ValueError, match="/camera/depth/image_raw"):  # the error lists the bag's topics
        next(bag_reader.read_bag_frames(bag, topics={**BAG_TOPICS, "color": "/nope"}))
    with pytest.raises(ValueError, match="8UC1"):
        rosbag_io.decode_depth(rosbag_io.image_msg(np.zeros((2, 2), np.uint8), "8UC1", 0, "c"))
    with pytest.raises(ValueError, match="mono8"):
        rosbag_io.decode_color(rosbag_io.image_msg(np.zeros((2, 2), np.uint8), "mono8", 0, "c"))


def test_bag_colour_larger_than_depth(tmp_path):
    """Colour at twice the depth resolution, CameraInfo for the colour image: frames at depth size."""
    store = rosbag_io.typestore()
    frame = make_frame(0, stamp=5.0, with_instance=False)
    big = cv2.resize(frame.color, (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
    k_big = K.copy()
    k_big[:2, :2] *= 2
    k_big[:2, 2] = (K[:2, 2] + 0.5) * 2 - 0.5  # pixel-centre convention
    ns = rosbag_io.seconds_to_ns(frame.stamp)
    msgs = {"color": rosbag_io.image_msg(big, "rgb8", ns, "camera"),
            "depth": rosbag_io.image_msg(np.round(frame.depth * 1000).astype(np.uint16), "16UC1", ns, "camera"),
            "camera_info": rosbag_io.camera_info_msg(k_big, 2 * W, 2 * H, ns, "camera"),
            "pose": rosbag_io.pose_msg(frame.pose, ns, "map")}
    with Writer(tmp_path / "b", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        for role, msg in msgs.items():
            conn = w.add_connection(BAG_TOPICS[role], rosbag_io.ROLE_TYPES[role], typestore=store)
            w.write(conn, ns, store.serialize_cdr(msg, msg.__msgtype__))
    (got,) = bag_reader.read_bag_frames(tmp_path / "b")
    assert got.color.shape == (H, W, 3)
    np.testing.assert_allclose(got.intrinsics, K)
    assert np.abs(got.color.astype(int) - frame.color.astype(int)).mean() < 3


def test_pointcloud2_layouts():
    """Padded points, padded rows, big endian, NaN holes, separate r/g/b fields."""
    field = type("F", (), {})

    def f(name, offset, datatype):
        x = field()
        x.name, x.offset, x.datatype, x.count = name, offset, datatype, 1
        return x

    xyz = np.array([[1, 2, 3], [np.nan, 0, 0], [4, 5, 6], [7, 8, 9]], np.float64)
    rec = np.zeros(4, dtype={"names": ["x", "y", "z", "b", "g", "r"], "formats": [">f8"] * 3 + ["u1"] * 3,
                             "offsets": [0, 8, 16, 28, 29, 30], "itemsize": 40})
    rec["x"], rec["y"], rec["z"] = xyz.T
    rec["r"], rec["g"], rec["b"] = [10, 20, 30, 40], [1, 2, 3, 4], [5, 6, 7, 8]
    rows = rec.view(np.uint8).reshape(2, 80)
    data = np.concatenate([rows, np.zeros((2, 8), np.uint8)], axis=1).ravel()  # row_step 88
    fields = [f("x", 0, 8), f("y", 8, 8), f("z", 16, 8), f("b", 28, 2), f("g", 29, 2), f("r", 30, 2)]
    got_xyz, got_rgb = rosbag_io.pointcloud2_to_arrays(fields, 40, data.tobytes(), True,
                                                       width=2, height=2, row_step=88)
    np.testing.assert_array_equal(got_xyz, xyz[[0, 2, 3]].astype(np.float32))
    np.testing.assert_array_equal(got_rgb, [[10, 1, 5], [30, 3, 7], [40, 4, 8]])
    with pytest.raises(ValueError, match="has no 'x' field"):
        rosbag_io.pointcloud2_to_arrays(fields[1:], 40, data.tobytes(), True, width=2, height=2, row_step=88)


def test_bag_reader_and_node_decode_alike():
    """One decoder: float r, g, b channels in 0..255 are read as colours by training too (they used to be
    scaled by 255 again and saturate to white), and every layout gives the node's result."""
    from sensor_msgs.msg import PointCloud2, PointField

    from folk_ros.ros.conversions import cloud_from_msg

    rgb = np.array([[200, 100, 0], [10, 20, 30], [255, 255, 255]], np.float32)
    xyz = np.arange(9, dtype=np.float32).reshape(3, 3)
    for scale in (1.0, 1 / 255.0):                     # float channels in 0..255 and in 0..1
        rec = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "<f4"), ("g", "<f4"),
                                 ("b", "<f4")])
        rec["x"], rec["y"], rec["z"] = xyz.T
        rec["r"], rec["g"], rec["b"] = (rgb * scale).T
        fields = [PointField(name=n, offset=4 * k, datatype=PointField.FLOAT32, count=1)
                  for k, n in enumerate("xyzrgb")]
        got_xyz, got_rgb = rosbag_io.pointcloud2_to_arrays(fields, 24, rec.tobytes(), width=3)
        np.testing.assert_array_equal(got_rgb, rgb.astype(np.uint8))
        msg = PointCloud2(height=1, width=3, fields=fields, point_step=24, row_step=72, data=rec.tobytes())
        node = cloud_from_msg(msg)
        np.testing.assert_array_equal(np.round(node.cloud.rgb * 255).astype(np.uint8), got_rgb)
        np.testing.assert_array_equal(node.cloud.xyz, got_xyz)


def test_rclpy_reads_our_bag(tmp_path):
    """The proof that a real ROS 2 consumer understands the bag: rclpy deserialises our bytes."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    frame = make_frame(0, stamp=12.25, with_instance=False)
    (cloud,) = make_clouds([12.5])
    bag = tmp_path / "bag"
    rosbag_io.write_bag(bag, [frame], [cloud])
    types = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CameraInfo": CameraInfo,
             "sensor_msgs/msg/PointCloud2": PointCloud2, "geometry_msgs/msg/PoseStamped": PoseStamped}
    msgs = {}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            msgs[conn.topic] = deserialize_message(bytes(raw), types[conn.msgtype])
            assert rosbag_io.header_stamp_ns(raw) == rosbag_io.stamp_ns(msgs[conn.topic].header)

    color = msgs[BAG_TOPICS["color"]]
    assert (color.encoding, color.width, color.height, color.step) == ("rgb8", W, H, 3 * W)
    stamp = color.header.stamp
    assert (stamp.sec, stamp.nanosec, color.header.frame_id) == (12, 250_000_000, "camera")
    np.testing.assert_array_equal(np.frombuffer(bytes(color.data), np.uint8).reshape(H, W, 3), frame.color)
    depth = msgs[BAG_TOPICS["depth"]]
    assert depth.encoding == "16UC1" and depth.step == 2 * W
    depth_m = np.frombuffer(bytes(depth.data), "<u2").reshape(H, W) / 1000.0
    np.testing.assert_allclose(depth_m, frame.depth, atol=5e-4)
    info = msgs[BAG_TOPICS["camera_info"]]
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), K)
    np.testing.assert_allclose(np.reshape(info.p, (3, 4))[:, :3], K)
    pose = msgs[BAG_TOPICS["pose"]]
    assert pose.header.frame_id == "map"
    np.testing.assert_allclose(rosbag_io.pose_to_matrix(pose), frame.pose, atol=1e-9)

    pc = msgs[BAG_TOPICS["cloud"]]
    assert pc.header.frame_id == "map" and pc.height == 1 and pc.width == len(cloud[1])
    assert [(f.name, f.offset, f.datatype, f.count) for f in pc.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]
    xyz, rgb = rosbag_io.pointcloud2_to_arrays(pc.fields, pc.point_step, bytes(pc.data), pc.is_bigendian,
                                               width=pc.width, height=pc.height, row_step=pc.row_step)
    np.testing.assert_array_equal(xyz, cloud[1])
    np.testing.assert_array_equal(rgb, cloud[2])
    # PCL convention: rgb float32 whose bits are 0x00RRGGBB
    packed = np.frombuffer(bytes(pc.data), np.float32).reshape(-1, 4)[:, 3].view(np.uint32)
    r, g, b = cloud[2].astype(np.uint32).T
    np.testing.assert_array_equal(packed, r << 16 | g << 8 | b)
