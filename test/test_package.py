"""The ROS 2 package is well formed and its messages are built and usable."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_package_xml():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "folk_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "sensor_msgs", "visualization_msgs", "folk_ros_interfaces"} <= deps
    setup_py = (REPO / "setup.py").read_text()
    assert re.search(r'version="%s"' % re.escape(root.findtext("version")), setup_py)


def test_interface_package_lists_every_msg():
    cmake = (REPO / "interfaces/folk_ros_interfaces/CMakeLists.txt").read_text()
    for msg in sorted((REPO / "msg").glob("*.msg")):
        assert f"msg/{msg.name}" in cmake, f"{msg.name} is not generated"


def test_instance_array_round_trip():
    from folk_ros_interfaces.msg import Instance, InstanceArray
    from rclpy.serialization import deserialize_message, serialize_message

    inst = Instance(id=3, label="mug", label_index=1, score=0.75, point_indices=[4, 5, 6])
    inst.centroid.x, inst.bbox_min.y, inst.bbox_max.z = 1.0, -2.0, 3.5
    msg = InstanceArray(vocabulary=["chair", "mug"], instances=[inst])
    msg.header.frame_id = "map"
    back = deserialize_message(serialize_message(msg), InstanceArray)
    got = back.instances[0]
    assert back.header.frame_id == "map" and list(back.vocabulary) == ["chair", "mug"]
    assert (got.id, got.label, got.label_index) == (3, "mug", 1)
    assert abs(got.score - 0.75) < 1e-7 and list(got.point_indices) == [4, 5, 6]
    assert (got.centroid.x, got.bbox_min.y, got.bbox_max.z) == (1.0, -2.0, 3.5)
