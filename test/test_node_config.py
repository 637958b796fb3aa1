"""The folk_segmenter node's parameters, config/segment.yaml, launch/segment.launch.py and config/folk.rviz,
without a node: the launch file runs against recording stand-ins for launch/launch_ros (not installable here;
the package is checked with the real ROS 2 CLI elsewhere)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

from folk_ros.ros import parameters as params
from folk_ros.ros.node import TOPIC_IN, TOPIC_LABELED, TOPIC_MARKERS
from test.fixtures import segment_yaml_parameters

REPO = Path(__file__).resolve().parents[1]


def test_yaml_documents_exactly_the_declared_parameters():
    values = segment_yaml_parameters()
    assert set(values) == {p.name for p in params.PARAMETERS}
    settings = params.read_settings(values)   # the yaml's values pass the node's own checks
    assert settings.vocabulary == tuple(values["vocabulary"])


def test_read_settings_and_live_updates_reject_with_reasons():
    values = {p.name: p.default for p in params.PARAMETERS}
    settings = params.read_settings(values)
    assert "prompt_template" not in params.segmenter_overrides(settings)      # applied live, per cloud
    assert {"nms_iou", "dbscan_eps", "mask_threshold"}.isdisjoint(params.segmenter_overrides(settings))  # -1
    given = params.segmenter_overrides(params.read_settings({**values, "nms_iou": 0.5, "dbscan_eps": 0.0,
                                                             "mask_threshold": 0.3}))
    assert (given["nms_iou"], given["dbscan_eps"], given["mask_threshold"]) == (0.5, 0.0, 0.3)  # 0: no split
    with pytest.raises(ValueError, match="mask_threshold"):
        params.read_settings({**values, "mask_threshold": 0.0})
    assert params.initial_live(settings, "bundle {}").prompt_template == "bundle {}"   # '' -> the bundle's
    mine = params.read_settings({**values, "prompt_template": "a photo of a {}"})
    assert params.initial_live(mine, "bundle {}").prompt_template == "a photo of a {}"
    with pytest.raises(ValueError, match="device"):
        params.read_settings({**values, "device": "tpu"})
    with pytest.raises(ValueError, match="empty"):
        params.read_settings({**values, "vocabulary": []})
    from rclpy.parameter import Parameter
    live = params.LiveSettings(("chair",), "a {} in the scene", 0.1)
    new = params.check_live_update(live, [Parameter("vocabulary", value=["mug", "cup"]),
                                          Parameter("prompt_template", value="")], "bundle {}", settings)
    assert new == params.LiveSettings(("mug", "cup"), "bundle {}", 0.1)
    for bad, match in [(Parameter("vocabulary", Parameter.Type.STRING_ARRAY, []), "empty"),
                       (Parameter("vocabulary", value=["mug", ""]), "non-empty strings"),
                       (Parameter("vocabulary", value=["mug", "mug"]), "duplicate"),
                       (Parameter("vocabulary", value=[1, 2]), "non-empty strings"),
                       (Parameter("prompt_template", value="no placeholder"), "{}"),
                       (Parameter("prompt_template", value="{} and {}"), "exactly once"),
                       (Parameter("vocabulary", value=[f"n{i}" for i in range(2001)]), "max_vocabulary 2,000"),
                       (Parameter("vocabulary", value=["x" * 100_000]), "max_name_length 200"),
                       (Parameter("score_threshold", value=1.5), r"\[0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            params.check_live_update(live, [bad], "bundle {}", settings)
    for name, bad in [("dbscan_eps", -0.5), ("nms_iou", -0.5), ("nms_iou", 1.5), ("mask_threshold", 1.0)]:
        with pytest.raises(ValueError, match=f"{name} must be -1"):    # never silently the bundle's value
            params.read_settings({**values, name: bad})
    big = [f"name {i}" for i in range(10_000)]      # the cap is a parameter
    assert params.check_live_update(live, [Parameter("vocabulary", value=big)], "b {}",
                                    params.read_settings({**values, "max_vocabulary": 20_000})).vocabulary == tuple(big)


def test_resolve_bundle(tmp_path):
    (tmp_path / "b").mkdir()
    assert params.resolve_bundle("b", cwd=tmp_path) == tmp_path / "b"
    assert params.resolve_bundle(str(tmp_path / "b")) == tmp_path / "b"
    with pytest.raises(FileNotFoundError, match="looked in"):
        params.resolve_bundle("no/such/bundle", cwd=tmp_path)


class _Recorded:
    """Stands in for a launch action: remembers its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _RecordedLifecycle(_Recorded):
    pass


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


class _PackageNotFoundError(KeyError):
    pass


def _share_directory(pkg, installed=("folk_ros", "rviz2")):
    if pkg not in installed:
        raise _PackageNotFoundError(f"package '{pkg}' not found")
    return str(REPO)


def _load_launch_file(monkeypatch, share_directory=_share_directory):
    """Import launch/segment.launch.py with recording stand-ins for launch/launch_ros (not installable here)."""
    stubs = {
        "launch": {"LaunchDescription": lambda entities: list(entities)},
        "launch.actions": {"DeclareLaunchArgument": _Recorded, "OpaqueFunction": _Recorded},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {}, "launch_ros.actions": {"Node": _Recorded, "LifecycleNode": _RecordedLifecycle},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": share_directory,
                                        "PackageNotFoundError": _PackageNotFoundError},
    }
    for name, attrs in stubs.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    spec = importlib.util.spec_from_file_location("segment_launch", REPO / "launch/segment.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_file_names_match_the_node(monkeypatch):
    launch = _load_launch_file(monkeypatch)
    entities = launch.generate_launch_description()
    args = {e.args[0]: e.kwargs["default_value"] for e in entities if "default_value" in e.kwargs}
    assert set(args) == {"params_file", "cloud_topic", "vocabulary", "namespace", "rviz", "managed"}
    assert Path(args["params_file"]) == REPO / "config/segment.yaml"
    setup = entities[-1].kwargs["function"]

    context = {**args, "cloud_topic": "/mapping/cloud", "vocabulary": "[mug, 'fire extinguisher']",
               "namespace": "robot1", "rviz": "true"}
    node, rviz = setup(context)
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"]) == ("folk_ros", "folk_segmenter", params.NODE_NAME)
    assert kw["namespace"] == "robot1"
    (parameters,) = kw["parameters"]
    assert set(parameters) == {p.name for p in params.PARAMETERS}
    assert parameters["vocabulary"] == ["mug", "fire extinguisher"]
    ((src, dst),) = kw["remappings"]
    assert src == TOPIC_IN and dst.perform(context) == "/mapping/cloud"
    assert rviz.kwargs["executable"] == "rviz2" and rviz.kwargs["namespace"] == "robot1"
    assert Path(rviz.kwargs["arguments"][1]) == REPO / "config/folk.rviz"
    assert {src for src, _ in rviz.kwargs["remappings"]} == {f"/{TOPIC_LABELED}", f"/{TOPIC_MARKERS}"}

    (managed,) = setup({**args, "managed": "true"})        # the lifecycle node, same name and parameters
    assert isinstance(managed, _RecordedLifecycle) and managed.kwargs["executable"] == "folk_segmenter_managed"
    assert managed.kwargs["name"] == params.NODE_NAME and set(managed.kwargs["parameters"][0]) == set(parameters)
    assert "folk_segmenter_managed = folk_ros.ros.lifecycle_node:run" in (REPO / "setup.py").read_text()
    (only_node,) = setup({**args, "rviz": "false"})
    assert only_node.kwargs["parameters"][0]["vocabulary"] == segment_yaml_parameters()["vocabulary"]
    assert launch.parse_vocabulary("mug, chair") == ["mug", "chair"]
    with pytest.raises(RuntimeError, match="non-empty list"):
        launch.parse_vocabulary("[]")
    setup_py = (REPO / "setup.py").read_text()
    if "folk_segmenter" in setup_py:   # the console_scripts entry the launch file starts
        assert "folk_segmenter = folk_ros.ros.node:run" in setup_py


def test_rviz_without_rviz2_fails_before_starting_anything(monkeypatch):
    launch = _load_launch_file(monkeypatch, lambda pkg: _share_directory(pkg, installed=("folk_ros",)))
    entities = launch.generate_launch_description()
    args = {e.args[0]: e.kwargs["default_value"] for e in entities if "default_value" in e.kwargs}
    setup = entities[-1].kwargs["function"]
    with pytest.raises(RuntimeError, match="rviz:=true needs the ROS package 'rviz2'") as err:
        setup({**args, "rviz": "true"})
    assert len(str(err.value).splitlines()) == 1
    (node,) = setup({**args, "rviz": "false"})          # without rviz the segmenter starts as before
    assert node.kwargs["executable"] == "folk_segmenter"


def test_rviz_config_shows_the_node_outputs():
    cfg = yaml.safe_load((REPO / "config/folk.rviz").read_text())["Visualization Manager"]
    assert cfg["Global Options"]["Fixed Frame"] == "map"
    displays = {d["Class"]: d for d in cfg["Displays"]}
    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert cloud["Topic"]["Value"] == f"/{TOPIC_LABELED}" and cloud["Color Transformer"] == "RGB8"
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == f"/{TOPIC_MARKERS}"
