"""The parameters of the ``folk_segmenter`` node: one table, declared once, read once.

``PARAMETERS`` is the only place a parameter is named. It feeds ``declare_parameters`` (with a
ParameterDescriptor each: type, description, read-only flag, range), ``--help`` and the test that
``config/segment.yaml`` documents exactly these names. ``read_settings`` turns the declared values
into a frozen :class:`NodeSettings` and ``segmenter_overrides`` into the keyword overrides of
``Segmenter.from_bundle`` (``SegmenterConfig`` fields).

Three parameters are live (``LIVE``): ``vocabulary``, ``prompt_template`` and ``score_threshold``.
``check_live_update`` validates a proposed change (rclpy has already checked type and range against
the descriptor) and returns the new :class:`LiveSettings`, or raises ValueError with the reason that
the node hands back in its SetParametersResult. Everything else is read-only: it shapes the model,
the subscription or the published messages, which are built once at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from folk_ros.core.cloud import DEFAULT_RGB
from folk_ros.core.map_config import MapConfig
from folk_ros.core.segmenter_config import SegmenterConfig
from folk_ros.core.vocabulary import validate_vocabulary

PACKAGE = "folk_ros"
NODE_NAME = "folk_segmenter"
REPO_ROOT = Path(__file__).resolve().parents[2]  # the source tree (or site-packages when pip-installed)

DEVICES = ("auto", "cpu", "cuda")
RELIABILITIES = ("reliable", "best_effort")
SPARSE_BACKENDS = ("torch", "minkowski", "auto")
# parameters where -1 means "the bundle's value"; anything else must lie in (low, high), closed or open
BUNDLE_DEFAULTED = {"nms_iou": (0.0, 1.0, True), "mask_threshold": (0.0, 1.0, False), "dbscan_eps": (0.0, 10.0, True)}
MODES = ("per_cloud", "map")
DEFAULT_VOCABULARY = ("chair", "table", "couch", "bed", "cabinet", "shelf", "lamp", "plant",
                      "monitor", "trash can", "toilet", "sink", "door", "window")


@dataclass(frozen=True)
class ParamSpec:
    """One row of the parameter table.

    ``limits`` is (low, high) for numbers (inclusive; becomes the descriptor's range) or a tuple of
    allowed strings (written into ``additional_constraints`` and checked by :func:`read_settings`).
    """

    name: str
    default: Any
    type: Parameter.Type
    description: str
    read_only: bool = True
    limits: tuple = ()

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, type=self.type.value, description=self.description,
                                read_only=self.read_only)
        if self.limits and isinstance(self.limits[0], str):
            d.additional_constraints = "one of: " + ", ".join(self.limits)
        elif self.limits and self.type == Parameter.Type.INTEGER:
            d.integer_range = [IntegerRange(from_value=int(self.limits[0]), to_value=int(self.limits[1]), step=1)]
        elif self.limits and self.type == Parameter.Type.DOUBLE:
            d.floating_point_range = [FloatingPointRange(from_value=float(self.limits[0]),
                                                         to_value=float(self.limits[1]), step=0.0)]
        return d


T = Parameter.Type
PARAMETERS: tuple[ParamSpec, ...] = (
    # --- live: changeable with `ros2 param set` while the node runs
    ParamSpec("vocabulary", list(DEFAULT_VOCABULARY), T.STRING_ARRAY,
              "Names to label instances with (non-empty, distinct). Live: the text is encoded once on "
              "change and the next cloud uses it.", read_only=False),
    ParamSpec("prompt_template", "", T.STRING,
              "CLIP prompt with '{}' for the name, e.g. 'a {} in the scene'; '' = the template the "
              "bundle was trained with. Live.", read_only=False),
    ParamSpec("score_threshold", SegmenterConfig.score_threshold, T.DOUBLE,
              "Drop instances whose confidence (proposal score x label probability) is below. Live.",
              read_only=False, limits=(0.0, 1.0)),
    ParamSpec("max_vocabulary", 2000, T.INTEGER,
              "Refuse a vocabulary of more names than this (checked before any text is encoded).",
              limits=(1, 1_000_000)),
    ParamSpec("max_name_length", 200, T.INTEGER,
              "Refuse a vocabulary with a name longer than this many characters (CLIP reads 77 tokens).",
              limits=(1, 100_000)),
    # --- model (start-up)
    ParamSpec("model_bundle", "models/folk-synth", T.STRING,
              "Model bundle folder (manifest.json, mask3d.pt, clip/, student.pt). A relative path is "
              "looked up in the working directory, then the package share directory, then the source tree."),
    ParamSpec("mask3d_checkpoint", "", T.STRING,
              "Mask3D checkpoint used instead of the bundle's (ours, or the official Lightning .ckpt); '' = the "
              "bundle's."),
    ParamSpec("student_checkpoint", "", T.STRING,
              "Student checkpoint (python -m training.distill.train) used instead of the bundle's; '' = the "
              "bundle's."),
    ParamSpec("clip_model", "", T.STRING,
              "CLIP used instead of the bundle's: an open_clip folder, or a name whose weights are on disk; "
              "'' = the bundle's."),
    ParamSpec("allow_unsafe_checkpoints", False, T.BOOL,
              "Load checkpoints that hold more than weights by full unpickling, which can run code from the "
              "file; false (default): such files are refused with the reason. Only for files you trust."),
    ParamSpec("device", "auto", T.STRING, "Torch device: auto (cuda if available), cpu or cuda.",
              limits=DEVICES),
    ParamSpec("sparse_backend", "torch", T.STRING,
              "Sparse convolution backend of the Mask3D backbone: torch (pure PyTorch, always there), "
              "minkowski (MinkowskiEngine 0.5.4, when installed: scripts/build_minkowski.sh) or auto "
              "(minkowski when it imports).", limits=SPARSE_BACKENDS),
    ParamSpec("text_cache_dir", "", T.STRING,
              "Folder of CLIP text embeddings kept between runs: a vocabulary encoded before (or in the bundle's "
              "text_cache/) is read back without loading CLIP (it loads on a thread of its own after ready, for "
              "new names; names the store lacks at start are encoded right after ready, and clouds wait for "
              "them); '' = $ROS_HOME/folk_ros/text_embeddings, 'none' = keep nothing (CLIP loads at start-up)."),
    ParamSpec("num_threads", 0, T.INTEGER, "CPU threads of the worker's torch work (Mask3D, the student, text "
              "encoding; the model loads with as many); 0 = torch's default.", limits=(0, 256)),
    ParamSpec("max_instances", SegmenterConfig.max_instances, T.INTEGER,
              "Keep at most this many instances per cloud, best first.", limits=(1, 1000)),
    ParamSpec("min_points", SegmenterConfig.min_points, T.INTEGER,
              "Drop proposals with fewer points (counted after downsampling).", limits=(1, 1_000_000)),
    ParamSpec("nms_iou", -1.0, T.DOUBLE,
              "Class-agnostic mask NMS IoU of the Mask3D proposals (FOLK's paper: 0.9); -1 = the bundle's value.",
              limits=(-1.0, 1.0)),
    ParamSpec("mask_threshold", -1.0, T.DOUBLE,
              "A Mask3D proposal's mask is the points whose mask probability exceeds this (Mask3D: 0.5); "
              "-1 = the bundle's value, else in (0, 1).", limits=(-1.0, 1.0)),
    ParamSpec("dbscan_eps", -1.0, T.DOUBLE,
              "Split every Mask3D proposal into its parts further apart than this many metres (Mask3D's DBSCAN "
              "post-processing; the official ScanNet setting is 0.95). -1 = the bundle's value, 0 = no split.",
              limits=(-1.0, 10.0)),
    # --- input
    ParamSpec("max_points", 200_000, T.INTEGER,
              "Voxel-downsample clouds with more points before Mask3D (voxel grown from voxel_size until "
              "at most this many remain); results are mapped back to every input point. 0 = never.",
              limits=(0, 50_000_000)),
    ParamSpec("voxel_size", 0.02, T.DOUBLE, "First voxel edge (m) tried when downsampling.",
              limits=(0.001, 1.0)),
    ParamSpec("max_input_points", 2_000_000, T.INTEGER,
              "Reject (with a warning) clouds with more points than this before reading them.",
              limits=(1, 500_000_000)),
    ParamSpec("max_range", 10_000.0, T.DOUBLE,
              "Points farther than this (m, on any axis) from a cloud's centre (map mode: from the map's origin) "
              "are dropped as non-physical outliers, with one throttled warning. Clouds far from their frame's "
              "origin (UTM) are recentred first, in float64, and results shifted back.", limits=(1.0, 1e7)),
    ParamSpec("default_color", list(DEFAULT_RGB), T.DOUBLE_ARRAY,
              "RGB in [0, 1] given to clouds without colour fields, warned about once, when the bundle's Mask3D "
              "reads colour (input xyzrgb); a geometry-only bundle (input xyz, for LiDAR) ignores colour."),
    ParamSpec("qos_reliability", "reliable", T.STRING,
              "Reliability of the cloud_in subscription: reliable or best_effort (matches any publisher).",
              limits=RELIABILITIES),
    ParamSpec("qos_depth", 10, T.INTEGER,
              "History depth (keep-last) of the cloud_in subscription: how many clouds the middleware holds "
              "while the executor is busy. Deeper survives bursts of bad traffic (a good cloud is not pushed "
              "out before it is read) at the cost of that many clouds of memory; the worker still segments "
              "only the latest valid one.", limits=(1, 100)),
    # --- output
    ParamSpec("publish_labeled_cloud", True, T.BOOL,
              "Publish labeled_cloud (x, y, z, rgb by label, instance_id, label_index, score per input point)."),
    ParamSpec("marker_lifetime", 0.0, T.DOUBLE, "Marker lifetime in seconds; 0 = until the next cloud's DELETEALL.",
              limits=(0.0, 3600.0)),
    ParamSpec("marker_points", False, T.BOOL,
              "Also draw each instance's points (subsampled) as a POINTS marker coloured by label."),
    ParamSpec("log_throttle_s", 5.0, T.DOUBLE,
              "At most one per-cloud log line, one drop report and one of each distinct warning per this "
              "many seconds; 0 = every time.", limits=(0.0, 3600.0)),
    ParamSpec("diagnostics_period_s", 1.0, T.DOUBLE,
              "Publish a diagnostic_msgs/DiagnosticArray on /diagnostics every this many seconds (rates, drops, "
              "latency by stage, model, device); 0 = never.", limits=(0.0, 3600.0)),
    ParamSpec("diagnostics_max_latency_s", 5.0, T.DOUBLE,
              "The diagnostics status is WARN when the last cloud took longer than this; 0 = never.",
              limits=(0.0, 3600.0)),
    # --- live object map (start-up)
    ParamSpec("mode", "per_cloud", T.STRING,
              "per_cloud: every cloud is segmented on its own, instance ids are rows of one InstanceArray. "
              "map: clouds (in map_frame) update a live object map with stable ids; instances carries the "
              "whole map; services query, reset_map and save_map.", limits=MODES),
    ParamSpec("map_frame", "map", T.STRING,
              "Map mode: the frame clouds must be in (tf2 is not used: clouds in another frame are skipped "
              "with one warning)."),
    ParamSpec("map_dir", "", T.STRING,
              "Map mode: the only folder save_map and map_file read and write; '' = $ROS_HOME/folk_ros/maps "
              "(ROS_HOME defaults to ~/.ros)."),
    ParamSpec("map_file", "", T.STRING,
              "Map mode: a file name inside map_dir, loaded at start when it exists, saved on shutdown and "
              "every map_save_every updates; '' = none."),
    ParamSpec("map_save_every", 0, T.INTEGER,
              "Map mode: also save map_file after every this many map updates; 0 = only on shutdown.",
              limits=(0, 1_000_000)),
    *(ParamSpec("map_" + f.name, f.default, T.INTEGER if f.type in (int, "int") else T.DOUBLE,
                "Map mode: " + f.metadata["help"], limits=f.metadata["limits"]) for f in fields(MapConfig)),
)
del T
SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
LIVE = tuple(p.name for p in PARAMETERS if not p.read_only)


@dataclass(frozen=True)
class LiveSettings:
    """What the worker reads before every cloud; replaced as a whole on a parameter change."""

    vocabulary: tuple[str, ...]
    prompt_template: str   # resolved: never '' (the bundle's template stands in)
    score_threshold: float


@dataclass(frozen=True)
class NodeSettings:
    """All parameter values, read once at start-up (``live`` is only the initial live state)."""

    model_bundle: str
    mask3d_checkpoint: str
    student_checkpoint: str
    clip_model: str
    allow_unsafe_checkpoints: bool
    device: str
    sparse_backend: str
    text_cache_dir: str
    num_threads: int
    max_instances: int
    min_points: int
    nms_iou: float
    mask_threshold: float
    dbscan_eps: float
    max_points: int
    voxel_size: float
    max_input_points: int
    max_range: float
    default_color: tuple[float, float, float]
    qos_reliability: str
    qos_depth: int
    publish_labeled_cloud: bool
    marker_lifetime: float
    marker_points: bool
    log_throttle_s: float
    diagnostics_period_s: float
    diagnostics_max_latency_s: float
    max_vocabulary: int
    max_name_length: int
    mode: str
    map_frame: str
    map_dir: str
    map_file: str
    map_save_every: int
    map_config: MapConfig   # from the map_* parameters of MapConfig's fields
    vocabulary: tuple[str, ...]
    prompt_template: str   # as given: '' = the bundle's
    score_threshold: float


def declarations() -> list[tuple[str, Any, ParameterDescriptor]]:
    """(name, default, descriptor) for ``Node.declare_parameters(namespace='', parameters=...)``."""
    return [(p.name, p.default, p.descriptor()) for p in PARAMETERS]


def read_settings(values: Mapping[str, Any]) -> NodeSettings:
    """Check the declared values beyond what descriptors express; ValueError names the parameter."""
    missing = sorted(set(SPECS) - set(values))
    if missing:
        raise ValueError(f"parameters not declared: {missing}")
    for p in PARAMETERS:
        if p.limits and isinstance(p.limits[0], str) and values[p.name] not in p.limits:
            raise ValueError(f"parameter {p.name} must be one of {', '.join(p.limits)}, got {values[p.name]!r}")
    color = tuple(float(c) for c in values["default_color"])
    if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
        raise ValueError(f"parameter default_color must be 3 numbers in [0, 1], got {list(color)}")
    for name, (lo, hi, closed) in BUNDLE_DEFAULTED.items():   # -1 = the bundle's; never silently replaced
        v = values[name]
        if v != -1.0 and not ((lo <= v <= hi) if closed else (lo < v < hi)):
            interval = f"[{lo:g}, {hi:g}]" if closed else f"({lo:g}, {hi:g})"
            raise ValueError(f"parameter {name} must be -1 (the bundle's value) or in {interval}, got {v}")
    vocabulary = _checked_vocabulary(values["vocabulary"], values["max_vocabulary"], values["max_name_length"])
    template = _checked_template(values["prompt_template"])
    try:
        map_config = MapConfig(**{f.name: values["map_" + f.name] for f in fields(MapConfig)})
    except ValueError as err:   # "map margin must ..." names the parameter map_margin
        raise ValueError(f"parameter {str(err).replace('map ', 'map_', 1)}") from None
    if values["map_file"] and not is_plain_file_name(values["map_file"]):
        raise ValueError(f"parameter map_file must be a plain file name inside map_dir (no path separators, "
                         f"no '..'), got {values['map_file']!r}")
    given = {name: values[name] for name in NodeSettings.__dataclass_fields__ if name in values}
    return NodeSettings(**{**given, "default_color": color, "vocabulary": vocabulary, "prompt_template": template,
                           "map_config": map_config})


def is_plain_file_name(name: str) -> bool:
    """A file name that stays inside its folder: no separators, not '.' or '..', not absolute, no NUL."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and not os.path.isabs(name))


def map_directory(settings: NodeSettings, environ: Mapping[str, str] = os.environ) -> Path:
    """The folder of map files: ``map_dir``, or $ROS_HOME/folk_ros/maps ($ROS_HOME defaults to ~/.ros)."""
    return _folder_or_ros_home(settings.map_dir, "maps", environ)


def text_store_directory(settings: NodeSettings, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder of the text embedding store: ``text_cache_dir``, or $ROS_HOME/folk_ros/text_embeddings;
    None for 'none'."""
    if settings.text_cache_dir == "none":
        return None
    return _folder_or_ros_home(settings.text_cache_dir, "text_embeddings", environ)


def _folder_or_ros_home(folder: str, name: str, environ: Mapping[str, str]) -> Path:
    if folder:
        return Path(os.path.expanduser(folder)).resolve()
    ros_home = environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
    return (Path(ros_home) / "folk_ros" / name).resolve()


def segmenter_overrides(settings: NodeSettings) -> dict[str, Any]:
    """``Segmenter.from_bundle(**overrides)`` keyword arguments (SegmenterConfig fields).

    ``prompt_template`` is left out: the loaded config keeps the bundle's (the fallback for ''), and
    the node applies the live template per cloud.
    """
    out = {"score_threshold": float(settings.score_threshold), "max_instances": int(settings.max_instances),
           "min_points": int(settings.min_points)}
    for name in ("nms_iou", "mask_threshold", "dbscan_eps"):   # -1: keep the bundle's
        if getattr(settings, name) >= 0:
            out[name] = float(getattr(settings, name))
    return out


def checkpoint_overrides(settings: NodeSettings) -> dict[str, str]:
    """``Segmenter.from_bundle(files=...)``: the individual model files given instead of the bundle's."""
    given = {"mask3d": settings.mask3d_checkpoint, "student": settings.student_checkpoint, "clip": settings.clip_model}
    return {k: v for k, v in given.items() if v}


def initial_live(settings: NodeSettings, bundle_template: str) -> LiveSettings:
    """The live settings at start-up; '' as prompt_template means ``bundle_template``."""
    return LiveSettings(vocabulary=settings.vocabulary, prompt_template=settings.prompt_template or bundle_template,
                        score_threshold=float(settings.score_threshold))


def check_live_update(current: LiveSettings, changes: Sequence[Parameter], bundle_template: str,
                      settings: NodeSettings) -> LiveSettings:
    """The live settings after ``changes``; ValueError with the reason if one is unacceptable.

    Read-only parameters never get here (rclpy rejects them by descriptor); types and numeric ranges
    are checked by rclpy too, but are checked again so the function stands on its own.
    """
    new = current
    for param in changes:
        if param.name == "vocabulary":
            new = replace(new, vocabulary=_checked_vocabulary(param.value, settings.max_vocabulary,
                                                              settings.max_name_length))
        elif param.name == "prompt_template":
            new = replace(new, prompt_template=_checked_template(param.value) or bundle_template)
        elif param.name == "score_threshold":
            value = param.value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"score_threshold must be a number in [0, 1], got {value!r}")
            new = replace(new, score_threshold=float(value))
    return new


def _checked_vocabulary(value, max_names: int, max_chars: int) -> tuple[str, ...]:
    """A valid vocabulary within the size caps (checked before anything is encoded); linear time."""
    if value is None:  # rclpy gives `[]` from the command line or a yaml no type, hence no value
        raise ValueError("vocabulary rejected: vocabulary is empty: give at least one name")
    if isinstance(value, (list, tuple)) and len(value) > max_names:
        raise ValueError(f"vocabulary rejected: {len(value):,} names, more than max_vocabulary {max_names:,}")
    long = next((n for n in value if isinstance(n, str) and len(n) > max_chars), None) \
        if isinstance(value, (list, tuple)) else None
    if long is not None:
        raise ValueError(f"vocabulary rejected: a name of {len(long):,} characters ({long[:30]!r}...), more than "
                         f"max_name_length {max_chars}")
    try:
        return validate_vocabulary(list(value) if isinstance(value, (list, tuple)) else value)
    except ValueError as err:
        raise ValueError(f"vocabulary rejected: {err}") from None


def _checked_template(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"prompt_template must be a string, got {type(value).__name__}")
    if value and value.count("{}") != 1:
        raise ValueError(f"prompt_template must contain '{{}}' exactly once, where the name goes (or be '' for "
                         f"the bundle's), got {value!r}")
    return value


def resolve_bundle(value: str, cwd: Path | None = None) -> Path:
    """The bundle folder for the ``model_bundle`` parameter; FileNotFoundError lists where it looked.

    Absolute paths are used as given (``~`` expanded). A relative path is tried against the working
    directory, then the package's share directory (installed by colcon; found through
    ``ament_index_python`` when importable), then the source tree this module lives in.
    """
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        candidates = [path]
    else:
        bases = [cwd or Path.cwd()]
        share = _package_share()
        if share is not None:
            bases.append(share)
        bases.append(REPO_ROOT)
        candidates = [base / path for base in bases]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"model bundle {value!r} not found (looked in: "
                            f"{', '.join(str(c) for c in candidates)}); set the model_bundle parameter "
                            f"to a bundle folder")


def _package_share() -> Path | None:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, LookupError, ValueError, OSError):  # not installed, or no AMENT_PREFIX_PATH
        return None


def describe_vocabulary(vocabulary: Sequence[str], shown: int = 8) -> str:
    """A short log text: the count and the first ``shown`` names (a 10,000-name list is not one log line)."""
    names = list(vocabulary)
    head = ", ".join(repr(n if len(n) <= 40 else n[:37] + "...") for n in names[:shown])
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return f"vocabulary of {len(names)} names [{head}{more}]"


def help_text() -> str:
    """The parameter table as text, for ``--help``."""
    rows = []
    for p in PARAMETERS:
        flag = "live" if not p.read_only else "start-up"
        rows.append(f"  {p.name} ({p.type.name.lower()}, {flag}, default {p.default!r})\n      {p.description}")
    return "parameters (set with --ros-args -p name:=value or --params-file config/segment.yaml):\n" + "\n".join(rows)
