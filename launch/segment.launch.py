"""Launch the folk_segmenter node (FOLK open-vocabulary 3D instance segmentation), optionally with RViz.

    ros2 launch folk_ros segment.launch.py
    ros2 launch folk_ros segment.launch.py cloud_topic:=/mapping/cloud rviz:=true
    ros2 launch folk_ros segment.launch.py vocabulary:="[mug, 'fire extinguisher']" namespace:=robot1
    ros2 launch folk_ros segment.launch.py params_file:=/path/to/my_segment.yaml
    ros2 launch folk_ros segment.launch.py managed:=true      # then: ros2 lifecycle set /folk_segmenter configure

Arguments:
    params_file  node parameters (default: the package's config/segment.yaml).
    cloud_topic  the PointCloud2 topic to segment (remaps the node's ``cloud_in``).
    vocabulary   optional override of the vocabulary parameter: a YAML list such as "[mug, chair]".
    namespace    namespace of the node (and RViz); topics become <namespace>/instances etc.
    rviz         true: also start rviz2 with config/folk.rviz (labeled cloud + markers, fixed frame map).
    managed      true: start the managed (lifecycle) node, unconfigured, for your lifecycle manager to
                 configure and activate (folk_ros/ros/lifecycle_node.py).

The node's section of ``params_file`` is read here and passed to the node as a dictionary, so it
applies under any namespace (a params file keyed ``folk_segmenter:`` only matches ``/folk_segmenter``).
Everything this starts can also be started without launch:
``python -m folk_ros.ros.node --ros-args --params-file config/segment.yaml -r cloud_in:=/my/cloud``
(``python -m folk_ros.ros.lifecycle_node ...`` for the managed one).
"""

import os

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

PACKAGE = "folk_ros"
EXECUTABLE = "folk_segmenter"   # console_scripts entry: folk_segmenter = folk_ros.ros.node:run
MANAGED_EXECUTABLE = "folk_segmenter_managed"   # folk_ros.ros.lifecycle_node:run
NODE_NAME = "folk_segmenter"    # the key of config/segment.yaml
INPUT_TOPIC = "cloud_in"
RVIZ_TOPICS = ("/labeled_cloud", "/markers")  # as written in config/folk.rviz


def node_parameters(params_file):
    """The ``ros__parameters`` of this node in a params file (keyed by name, /name, /**/name or /**)."""
    with open(params_file, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    merged = {}
    for key in ("/**", "/**/" + NODE_NAME, NODE_NAME, "/" + NODE_NAME):
        section = doc.get(key) or {}
        merged.update(section.get("ros__parameters") or {})
    if not merged:
        raise RuntimeError(f"{params_file} has no '{NODE_NAME}: ros__parameters:' section")
    return merged


def parse_vocabulary(text):
    """A vocabulary override: YAML list ("[mug, chair]") or comma-separated names; None when empty."""
    text = text.strip()
    if not text:
        return None
    value = yaml.safe_load(text) if text.startswith("[") else [name.strip() for name in text.split(",")]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise RuntimeError(f"vocabulary:={text!r} must be a non-empty list of names, e.g. \"[mug, chair]\"")
    return value


def require_package(name, what):
    """The share directory of ``name``; RuntimeError with one clear line when it is not installed."""
    try:
        return get_package_share_directory(name)
    except (PackageNotFoundError, LookupError, ValueError) as err:
        raise RuntimeError(f"{what} needs the ROS package '{name}', which is not installed ({err}); install it "
                           f"(e.g. apt install ros-$ROS_DISTRO-{name.replace('_', '-')}) or leave it out") from None


def _launch_setup(context):
    namespace = LaunchConfiguration("namespace").perform(context)
    parameters = node_parameters(LaunchConfiguration("params_file").perform(context))
    vocabulary = parse_vocabulary(LaunchConfiguration("vocabulary").perform(context))
    if vocabulary is not None:
        parameters["vocabulary"] = vocabulary
    with_rviz = LaunchConfiguration("rviz").perform(context).strip().lower() in ("true", "1", "yes")
    if with_rviz:   # checked before anything starts: a failed rviz2 lookup must not orphan the segmenter
        require_package("rviz2", "rviz:=true")
    managed = LaunchConfiguration("managed").perform(context).strip().lower() in ("true", "1", "yes")
    segmenter = dict(package=PACKAGE, name=NODE_NAME, namespace=namespace, parameters=[parameters],
                     remappings=[(INPUT_TOPIC, LaunchConfiguration("cloud_topic"))], output="screen",
                     emulate_tty=True)
    actions = [LifecycleNode(executable=MANAGED_EXECUTABLE, **segmenter) if managed
               else Node(executable=EXECUTABLE, **segmenter)]
    if with_rviz:
        rviz_config = os.path.join(get_package_share_directory(PACKAGE), "config", "folk.rviz")
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", namespace=namespace,
                            arguments=["-d", rviz_config],
                            remappings=[(topic, topic.lstrip("/")) for topic in RVIZ_TOPICS],
                            output="screen"))
    return actions


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "segment.yaml"),
                              description="YAML file with the folk_segmenter parameters"),
        DeclareLaunchArgument("cloud_topic", default_value=INPUT_TOPIC,
                              description="sensor_msgs/PointCloud2 topic to segment (remaps cloud_in)"),
        DeclareLaunchArgument("vocabulary", default_value="",
                              description='vocabulary override, e.g. "[mug, chair]" (empty: the params file\'s)'),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and RViz"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with config/folk.rviz"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="start the managed (lifecycle) node, for a lifecycle manager to bring up"),
        OpaqueFunction(function=_launch_setup),
    ])
