"""The ``folk_segmenter`` node: point clouds in, labeled instances out (FOLK inference, paper 3.3).

Topics (relative names; remap ``cloud_in`` to your mapping node's output)::

    cloud_in       sensor_msgs/PointCloud2                    subscribed (QoS from qos_reliability/qos_depth)
    instances      folk_ros_interfaces/InstanceArray          one per processed cloud, same header
    markers        visualization_msgs/MarkerArray             DELETEALL, then per instance a box + label
    labeled_cloud  sensor_msgs/PointCloud2                    point i = input point i (row-major):
                                                              x, y, z, rgb by label, instance_id,
                                                              label_index, score (NaN x,y,z stay NaN)

Threading: the subscription callback only checks and converts the message (``cloud_from_msg``) and
puts it into a one-slot, latest-only :class:`LatestSlot`; a worker thread takes it, runs the
Segmenter and publishes. A cloud that arrives while another waits replaces it (counted as dropped and
reported at a throttle), so the executor keeps serving the subscription and the parameter services
while a cloud is segmented. Live parameters (``vocabulary``, ``prompt_template``, ``score_threshold``)
are validated and the new text encoded in the on-set callback, on the executor, never in the worker;
the worker reads the committed :class:`~folk_ros.ros.parameters.LiveSettings` once per cloud.

Clouds above ``max_points`` are voxel-downsampled before Mask3D (:func:`fit_point_budget`), and the
masks are mapped back to every input point through the voxel inverse map (:func:`label_points`).

Run::

    python -m folk_ros.ros.node --ros-args --params-file config/segment.yaml
    ros2 run folk_ros folk_segmenter --ros-args --params-file config/segment.yaml   (installed)
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import rclpy
import rclpy.logging
import rclpy.utilities
import torch
from folk_ros_interfaces.msg import InstanceArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from folk_ros.core.cloud import PointCloud, voxel_downsample
from folk_ros.core.mask3d.model import CloudTooSmallError
from folk_ros.core.segmenter import Instances, Segmenter
from folk_ros.ros import parameters as params
from folk_ros.ros.conversions import (CloudConversion, CloudFormatError, cloud_from_msg, cloud_to_msg,
                                      instance_geometry, instances_to_msg, label_colors, markers_from_instances,
                                      point_labels)

TOPIC_IN, TOPIC_INSTANCES, TOPIC_MARKERS, TOPIC_LABELED = "cloud_in", "instances", "markers", "labeled_cloud"
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)
STAGES = ("convert", "downsample", "text", "proposals", "student", "classify", "messages", "publish")


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, missing bundle); the message is the one line to print."""


# ---------------------------------------------------------------------------------------------
# pure helpers (no Node): tested without spinning


class LatestSlot:
    """A one-slot, latest-only hand-off between the executor (put) and one worker (take).

    ``put`` replaces a waiting item and returns it (the caller counts it as dropped); ``take`` blocks
    until an item or ``close``; after ``close`` it returns None.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._closed = False

    def put(self, item) -> Any:
        with self._cond:
            replaced, self._item = self._item, item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()


class Throttle:
    """``ready(key)``: True at most once per ``period_s`` for each key (period 0: always)."""

    def __init__(self, period_s: float, clock=time.monotonic):
        self.period_s = float(period_s)
        self._clock = clock
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = self._clock()
        if len(self._last) > 1000:  # keys are warning texts: a stream of ever-different ones must not grow
            self._last.clear()
        last = self._last.get(key)
        if self.period_s > 0 and last is not None and now - last < self.period_s:
            return False
        self._last[key] = now
        return True


def input_problem(msg: PointCloud2, max_input_points: int) -> str | None:
    """Why a message is skipped before it is read (size only), or None."""
    n = int(msg.width) * int(msg.height)
    if n == 0:
        return f"empty cloud (width {msg.width} x height {msg.height}): skipped"
    if n > max_input_points:
        return (f"cloud of {n:,} points exceeds max_input_points {max_input_points:,}: skipped "
                f"(downsample upstream or raise max_input_points)")
    return None


def fit_point_budget(cloud: PointCloud, max_points: int, voxel_size: float, growth: float = 1.25,
                     max_rounds: int = 16) -> tuple[PointCloud, np.ndarray | None, float]:
    """Voxel-downsample ``cloud`` to at most ``max_points`` (0: no limit).

    The voxel edge starts at ``voxel_size`` and grows by at least ``growth`` (more when far off,
    assuming surface-like density, count ~ 1 / voxel^2) until the budget holds.

    Returns:
        (segmented cloud of V points, inverse (K,) int64 index of each input point's voxel in it, or
        None when nothing was dropped, voxel edge used (0.0 when not downsampled)).
    """
    if max_points <= 0 or len(cloud) <= max_points:
        return cloud, None, 0.0
    voxel = float(voxel_size)
    for _ in range(max_rounds):
        sub, _, inverse = voxel_downsample(cloud, voxel)
        if len(sub) <= max_points:
            break
        voxel *= max(growth, math.sqrt(len(sub) / max_points))
    return sub, inverse, voxel


@dataclass(frozen=True)
class PointLabels:
    """Segmenter output mapped back to the K kept input points.

    Attributes:
        point_ids: M arrays of (K_i,) int64 indices into the kept points, one per instance.
        instance_id, label_index: (K,) int32 (-1: none); score: (K,) float32 (0: none); where instances
            overlap the higher score wins (:func:`point_labels`).
    """

    point_ids: list[np.ndarray]
    instance_id: np.ndarray
    label_index: np.ndarray
    score: np.ndarray


def label_points(instances: Instances, inverse: np.ndarray | None) -> PointLabels:
    """Map masks over V segmented points back to K input points through ``inverse`` (K,) (None: V = K)."""
    masks = instances.masks
    if inverse is None:
        ids = [np.flatnonzero(m) for m in masks]
    else:
        ids = [np.flatnonzero(m[inverse]) for m in masks]  # one (K,) gather per instance, no (M, K) copy
    iid, lab, score = point_labels(masks, instances.label_indices, instances.scores)
    if inverse is not None:
        iid, lab, score = iid[inverse], lab[inverse], score[inverse]
    return PointLabels(point_ids=ids, instance_id=iid, label_index=lab, score=score)


@dataclass
class Outputs:
    instances: InstanceArray
    markers: MarkerArray
    labeled_cloud: PointCloud2 | None


def build_outputs(header: Header, conv: CloudConversion, n_input: int, instances: Instances,
                  labels: PointLabels, settings: params.NodeSettings) -> Outputs:
    """The three output messages of one cloud, all in ``header``'s frame and stamp.

    ``n_input`` is the message's point count (width * height); ``conv.indices`` maps the K kept
    points to it, so instance point indices and labeled-cloud points are in input row-major order.
    """
    xyz = conv.cloud.xyz
    centroids, bmin, bmax = instance_geometry(xyz, labels.point_ids)
    msg_ids = [conv.indices[ids] for ids in labels.point_ids]
    inst_msg = instances_to_msg(header, instances.vocabulary, msg_ids, instances.label_indices,
                                instances.scores, centroids, bmin, bmax)
    colors = label_colors(instances.label_indices)
    point_sets = [xyz[ids] for ids in labels.point_ids] if settings.marker_points else None
    markers = markers_from_instances(header, instances.labels, instances.scores, bmin, bmax, colors,
                                     lifetime_s=settings.marker_lifetime, point_sets=point_sets)
    labeled = None
    if settings.publish_labeled_cloud:
        full_xyz = np.full((n_input, 3), np.nan, np.float32)
        full_xyz[conv.indices] = xyz
        fields = {"instance_id": np.full(n_input, -1, np.int32), "label_index": np.full(n_input, -1, np.int32),
                  "score": np.zeros(n_input, np.float32)}
        for name, values in (("instance_id", labels.instance_id), ("label_index", labels.label_index),
                             ("score", labels.score)):
            fields[name][conv.indices] = values
        labeled = cloud_to_msg(full_xyz, label_colors(fields["label_index"]), header, fields)
    return Outputs(instances=inst_msg, markers=markers, labeled_cloud=labeled)


@dataclass(frozen=True)
class CloudReport:
    """What the per-cloud log line says: counts and milliseconds per stage (keys of STAGES)."""

    n_input: int
    n_nonfinite: int
    n_segmented: int
    n_instances: int
    timings: dict[str, float]

    def line(self, processed: int, dropped: int) -> str:
        stages = " ".join(f"{k} {self.timings[k]:.1f}" for k in STAGES if k in self.timings)
        return (f"cloud {self.n_input:,} pts ({self.n_nonfinite:,} non-finite, {self.n_segmented:,} segmented) "
                f"-> {self.n_instances} instances | ms: {stages} | total {sum(self.timings.values()):.1f} "
                f"| processed {processed}, dropped {dropped}")


@dataclass
class Job:
    """A converted cloud waiting for the worker."""

    header: Header
    conv: CloudConversion
    n_input: int
    convert_ms: float


# ---------------------------------------------------------------------------------------------
# the node


class SegmenterNode(Node):
    """``folk_segmenter``: see the module docstring. ``__init__`` only wires; it raises StartupError."""

    def __init__(self, **node_kwargs):
        super().__init__(params.NODE_NAME, **node_kwargs)
        self.settings = self._declare_parameters()
        self.segmenter = self._load_segmenter(self.settings)
        self._bundle_template = self.segmenter.cfg.prompt_template  # from the manifest (see segmenter_overrides)
        self._live = params.initial_live(self.settings, self._bundle_template)
        self._encode_text(self._live)
        self._live_lock = threading.Lock()
        self._throttle = Throttle(self.settings.log_throttle_s)
        self._warned_no_color = False
        self._dropped = 0
        self._processed = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)

        self._pub_instances = self.create_publisher(InstanceArray, TOPIC_INSTANCES, OUTPUT_QOS)
        self._pub_markers = self.create_publisher(MarkerArray, TOPIC_MARKERS, OUTPUT_QOS)
        self._pub_cloud = (self.create_publisher(PointCloud2, TOPIC_LABELED, OUTPUT_QOS)
                           if self.settings.publish_labeled_cloud else None)
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._work, name="folk_segmenter_worker", daemon=True)
        self._worker.start()
        reliability = (ReliabilityPolicy.RELIABLE if self.settings.qos_reliability == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.settings.qos_depth, reliability=reliability)
        self.create_subscription(PointCloud2, TOPIC_IN, self._on_cloud, qos)  # last: ready when visible
        self.get_logger().info(
            f"ready: bundle {self._bundle_path}, device {self.segmenter.device}, vocabulary "
            f"{list(self._live.vocabulary)}, subscribed to {self.resolve_topic_name(TOPIC_IN)}")

    # ---------------------------------------------------------------- start-up

    def _declare_parameters(self) -> params.NodeSettings:
        try:
            declared = self.declare_parameters("", params.declarations())
            return params.read_settings({p.name: p.value for p in declared})
        except Exception as err:  # rclpy raises several types for bad overrides; all are start-up errors
            raise StartupError(f"bad parameter: {err}") from err

    def _load_segmenter(self, settings: params.NodeSettings) -> Segmenter:
        try:
            self._bundle_path = params.resolve_bundle(settings.model_bundle)
            if settings.num_threads > 0:
                torch.set_num_threads(settings.num_threads)
            return Segmenter.from_bundle(self._bundle_path, device=settings.device,
                                         sparse_backend=settings.sparse_backend,
                                         files=params.checkpoint_overrides(settings),
                                         **params.segmenter_overrides(settings))
        except Exception as err:  # FileNotFoundError, BundleError, ValueError (device, mismatch), torch load errors
            raise StartupError(f"cannot start the Segmenter (model_bundle {settings.model_bundle!r}, device "
                               f"{settings.device!r}): {err}") from err

    # ---------------------------------------------------------------- parameters (executor thread)

    def _encode_text(self, live: params.LiveSettings) -> None:
        """Encode the vocabulary's text once (cached by the CLIP wrapper for the worker's next cloud)."""
        self.segmenter.clip.encode_text(list(live.vocabulary), live.prompt_template)

    def _on_set_parameters(self, changes) -> SetParametersResult:
        live_changes = [p for p in changes if p.name in params.LIVE]
        if not live_changes:
            return SetParametersResult(successful=True)
        try:
            with self._live_lock:
                current = self._live
            candidate = params.check_live_update(current, live_changes, self._bundle_template)
            if (candidate.vocabulary, candidate.prompt_template) != (current.vocabulary, current.prompt_template):
                self._encode_text(candidate)
        except Exception as err:  # ValueError from validation; anything from the text encoder
            reason = str(err)
            self.get_logger().warning(f"parameter change rejected: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, changes) -> None:
        live_changes = [p for p in changes if p.name in params.LIVE]
        if not live_changes:
            return
        with self._live_lock:
            self._live = params.check_live_update(self._live, live_changes, self._bundle_template)
            live = self._live
        self.get_logger().info(f"live parameters now: vocabulary {list(live.vocabulary)}, prompt_template "
                               f"{live.prompt_template!r}, score_threshold {live.score_threshold}")

    # ---------------------------------------------------------------- input (executor thread)

    def _on_cloud(self, msg: PointCloud2) -> None:
        problem = input_problem(msg, self.settings.max_input_points)
        if problem is not None:
            self._warn(problem)
            return
        t0 = time.perf_counter()
        try:
            conv = cloud_from_msg(msg, default_rgb=self.settings.default_color)
        except CloudFormatError as err:
            self._warn(f"cloud rejected: {err}")
            return
        n = int(msg.width) * int(msg.height)
        if len(conv.cloud) == 0:
            self._warn(f"cloud rejected: all {n:,} points have NaN/inf x, y or z")
            return
        if not conv.had_color and not self._warned_no_color:
            self._warned_no_color = True
            self.get_logger().warning(f"cloud has no colour fields (rgb, rgba or r/g/b): using default_color "
                                      f"{list(self.settings.default_color)} (reported once)")
        job = Job(header=msg.header, conv=conv, n_input=n, convert_ms=(time.perf_counter() - t0) * 1e3)
        if self._slot.put(job) is not None:
            self._dropped += 1
            if self._throttle.ready("dropped"):
                self.get_logger().warning(f"segmentation is slower than the input: {self._dropped} clouds "
                                          f"dropped so far (latest-only)")

    def _warn(self, text: str) -> None:
        if self._throttle.ready(text):
            self.get_logger().warning(text)

    # ---------------------------------------------------------------- worker thread

    def _work(self) -> None:
        while True:
            job = self._slot.take()
            if job is None:
                return
            try:
                outputs, report = self._process(job)
            except CloudTooSmallError as err:    # bad input, not a failure: one throttled warning
                self._warn(f"cloud skipped: {err}")
                continue
            except Exception as err:  # keep the node alive; the next cloud may be fine
                self.get_logger().error(f"segmentation failed: {type(err).__name__}: {err}")
                continue
            t0 = time.perf_counter()
            try:
                if outputs.labeled_cloud is not None and self._pub_cloud is not None:
                    self._pub_cloud.publish(outputs.labeled_cloud)
                self._pub_markers.publish(outputs.markers)
                self._pub_instances.publish(outputs.instances)
            except Exception:  # publishers are gone: the node is shutting down
                return
            report.timings["publish"] = (time.perf_counter() - t0) * 1e3
            self._processed += 1
            if self._throttle.ready("cloud"):
                self.get_logger().info(report.line(self._processed, self._dropped))

    def _process(self, job: Job) -> tuple[Outputs, CloudReport]:
        with self._live_lock:
            live = self._live
        self.segmenter.cfg = replace(self.segmenter.cfg, prompt_template=live.prompt_template,
                                     score_threshold=live.score_threshold)  # only this thread segments
        t0 = time.perf_counter()
        cloud, inverse, _ = fit_point_budget(job.conv.cloud, self.settings.max_points, self.settings.voxel_size)
        timings = {"convert": job.convert_ms, "downsample": (time.perf_counter() - t0) * 1e3}
        instances = self.segmenter.segment(cloud, live.vocabulary)
        timings.update({k: v for k, v in instances.timings.items() if k != "total"})
        t0 = time.perf_counter()
        labels = label_points(instances, inverse)
        outputs = build_outputs(job.header, job.conv, job.n_input, instances, labels, self.settings)
        timings["messages"] = (time.perf_counter() - t0) * 1e3
        return outputs, CloudReport(n_input=job.n_input, n_nonfinite=job.conv.dropped_nonfinite,
                                    n_segmented=len(cloud), n_instances=len(instances), timings=timings)

    # ---------------------------------------------------------------- shutdown

    def destroy_node(self) -> None:
        """Stop the worker (waits for the cloud in progress, up to 10 s), then destroy the node."""
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)
        super().destroy_node()


# ---------------------------------------------------------------------------------------------
# entry point


def main(argv: list[str] | None = None) -> int:
    """``folk_segmenter`` / ``python -m folk_ros.ros.node``: returns the exit code (0, or 1 on start-up errors)."""
    argv = list(sys.argv if argv is None else argv)
    non_ros = rclpy.utilities.remove_ros_args(argv)[1:]
    parser = argparse.ArgumentParser(prog=params.NODE_NAME, description=__doc__.split("\n")[0],
                                     epilog=params.help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(non_ros)
    rclpy.init(args=argv)
    node = None
    try:
        try:
            node = SegmenterNode()
        except StartupError as err:
            rclpy.logging.get_logger(params.NODE_NAME).error(str(err))
            return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()  # first: the rosout publisher goes with it, the line below is stderr only
            rclpy.logging.get_logger(params.NODE_NAME).info("shut down")
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
