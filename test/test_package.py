"""The ROS 2 package is well formed and its messages are built and usable."""

import ast
import re
import sys
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


# runtime imports without a ROS package or rosdep key of their own: pip name in requirements.txt / setup.py
PIP_NAMES = {"torch": "torch", "open_clip": "open-clip-torch", "safetensors": "safetensors"}
ROSDEP_KEYS = {"numpy": "python3-numpy", "scipy": "python3-scipy", "yaml": "python3-yaml",
               "transforms3d": "python3-transforms3d"}
SETUP_NAMES = {"numpy": "numpy", "scipy": "scipy", "yaml": "PyYAML", "transforms3d": "transforms3d", **PIP_NAMES}
OPTIONAL = {"MinkowskiEngine": "optional sparse backend (scripts/build_minkowski.sh)",
            "huggingface_hub": "optional: only looked up in a local cache, inside try/except"}
LAUNCHED = {"rviz2": "started by launch/segment.launch.py with rviz:=true",
            "lifecycle_msgs": "needed by rclpy.lifecycle, which the managed node imports"}


def runtime_imports() -> set[str]:
    """Top-level modules imported by folk_ros/ and launch/ (what runs on the robot), stdlib left out."""
    mods = set()
    for root in ("folk_ros", "launch"):
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"folk_ros"}


def test_package_xml_setup_py_and_requirements_agree_with_the_imports():
    deps = {e.text for e in ET.parse(REPO / "package.xml").getroot().iter("exec_depend")}
    imports = runtime_imports()
    python = set(ROSDEP_KEYS) | set(PIP_NAMES) | set(OPTIONAL)
    ros_imports = imports - python
    assert ros_imports <= deps, f"imported but not in package.xml: {sorted(ros_imports - deps)}"
    ros_deps = {d for d in deps if not d.startswith("python3-")}
    assert ros_deps - ros_imports <= set(LAUNCHED), f"in package.xml but never imported: {ros_deps - ros_imports}"
    keys = {ROSDEP_KEYS[m] for m in imports & set(ROSDEP_KEYS)}
    assert {d for d in deps if d.startswith("python3-")} == keys
    unknown = imports - python - ros_deps
    assert not unknown, f"imported, but neither a ROS package nor a known Python dependency: {sorted(unknown)}"
    requirements = (REPO / "requirements.txt").read_text()
    for module in imports & set(PIP_NAMES):
        assert re.search(rf"^{re.escape(PIP_NAMES[module])}\b", requirements, re.M), module
    setup_py = (REPO / "setup.py").read_text()
    install_requires = set(re.findall(r'"([A-Za-z0-9_.-]+)"', setup_py.split("install_requires=[")[1].split("]")[0]))
    assert install_requires - {"setuptools"} == {SETUP_NAMES[m] for m in imports & set(SETUP_NAMES)}


def test_requirements_split_python_from_ros_wheels():
    """A machine with ROS from apt installs requirements.txt only: it must not hold PyPI ROS wheels."""
    python = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    wheels = [line for line in (REPO / "requirements-ros-wheels.txt").read_text().splitlines()
              if line and line[0] != "#"]
    assert python and not [p for p in python if p.startswith(("ros-", "colcon"))]
    assert wheels and all(w.startswith(("ros-", "colcon")) for w in wheels)
    readme = (REPO / "README.md").read_text()
    assert "rosdep install --from-paths src/folk_ros src/folk_ros/interfaces --ignore-src -y" in readme
    assert "requirements-ros-wheels.txt" in (REPO / "scripts/setup.sh").read_text()
