"""What the ``folk_segmenter`` node does, as a mixin shared by the plain and the managed (lifecycle) node.

:class:`SegmenterRuntime` holds the node's behaviour in four steps: :meth:`_configure` (read the
parameters, load and check the model and the map, create publishers and services), :meth:`_activate`
(start the worker, subscribe, start /diagnostics), :meth:`_deactivate` (the reverse) and
:meth:`_cleanup` (save the map, free the model). ``folk_ros.ros.node.SegmenterNode`` runs the first two
at construction; ``folk_ros.ros.lifecycle_node.ManagedSegmenterNode`` runs each on its lifecycle
transition. The worker thread is :class:`~folk_ros.ros.cloud_worker.CloudWorker`; map mode (the live map's
worker path and services) is :class:`~folk_ros.ros.map_mode.MapMode`.
See ``folk_ros/ros/node.py`` for the topics, services and threading.
"""

from __future__ import annotations

import threading
import time

import torch
from diagnostic_msgs.msg import DiagnosticArray
from folk_ros_interfaces.msg import InstanceArray
from folk_ros_interfaces.srv import QueryMap, SaveMap
from rcl_interfaces.msg import SetParametersResult
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from folk_ros.core import torch_threads
from folk_ros.core.map_file import MapFileError
from folk_ros.core.live_map import LiveMap
from folk_ros.core.pointcloud2 import CloudFormatError
from folk_ros.core.segmenter import Segmenter
from folk_ros.ros import diagnostics
from folk_ros.ros import parameters as params
from folk_ros.ros.cloud_worker import REQUEST_TEXT, CloudWorker
from folk_ros.ros.conversions import cloud_from_msg
from folk_ros.ros.diagnostics import NodeStats
from folk_ros.ros.map_mode import LogLine, MapMode
from folk_ros.ros.work import Job, LatestSlot, Throttle, input_problem

TOPIC_IN, TOPIC_INSTANCES, TOPIC_MARKERS, TOPIC_LABELED = "cloud_in", "instances", "markers", "labeled_cloud"
TOPIC_DIAGNOSTICS = "/diagnostics"
SERVICE_QUERY, SERVICE_RESET, SERVICE_SAVE = "~/query", "~/reset_map", "~/save_map"
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, missing bundle); the message is the one line to print."""


class SegmenterRuntime(CloudWorker, MapMode):
    """The node's behaviour; mixed into an rclpy ``Node`` or ``LifecycleNode`` (see the module docstring)."""

    # ---------------------------------------------------------------- the four steps

    def _configure(self) -> None:
        """Read the parameters (declared by the node), load the model (and the map), create the outputs and
        the map services; StartupError with one line when anything is wrong."""
        self.settings = self._read_settings()
        self._threads = self.settings.num_threads or torch.get_num_threads()
        # torch work at start-up runs on a thread of its own, so the worker's is the only OpenMP team
        # that lives on (folk_ros.core.torch_threads)
        torch_threads.on_own_thread(self._load, threads=self._threads)
        self._live_lock = threading.Lock()
        self._throttle = Throttle(self.settings.log_throttle_s)
        self._warned_no_color = False
        self._warned_frames: set[str] = set()
        self._errors_traced: set[str] = set()
        self._stats = NodeStats()
        self._map_lock = threading.Lock()      # the worker updates the map, services read it
        self._last_map_job: Job | None = None  # the last cloud folded into the map (republished on relabel)
        self._published_ids: set[int] = set()
        self._map_updates = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._param_callbacks = True
        self._pub_instances = self._output_publisher(InstanceArray, TOPIC_INSTANCES, OUTPUT_QOS)
        self._pub_markers = self._output_publisher(MarkerArray, TOPIC_MARKERS, OUTPUT_QOS)
        self._pub_cloud = (self._output_publisher(PointCloud2, TOPIC_LABELED, OUTPUT_QOS)
                           if self.settings.publish_labeled_cloud else None)
        self._pub_diagnostics = (self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, 10)
                                 if self.settings.diagnostics_period_s > 0 else None)
        self._map_services = []
        if self.live_map is not None:   # on the executor: they hold the map lock only for short commits
            self._map_services = [self.create_service(QueryMap, SERVICE_QUERY, self._on_query),
                                  self.create_service(Trigger, SERVICE_RESET, self._on_reset),
                                  self.create_service(SaveMap, SERVICE_SAVE, self._on_save)]
        self._slot: LatestSlot | None = None
        self._worker: threading.Thread | None = None
        self._subscription = self._diag_timer = None

    def _activate(self) -> None:
        """Start the worker, /diagnostics and, last, the cloud subscription (ready when it is visible)."""
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._work, name="folk_segmenter_worker", daemon=True)
        self._worker.start()
        if self._pub_diagnostics is not None:   # /diagnostics: absolute, as diagnostic_aggregator expects
            self._diag_state = diagnostics.DiagnosticsState(self._stats.snapshot())
            self._diag_timer = self.create_timer(self.settings.diagnostics_period_s, self._publish_diagnostics)
        reliability = (ReliabilityPolicy.RELIABLE if self.settings.qos_reliability == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.settings.qos_depth, reliability=reliability)
        self._subscription = self.create_subscription(PointCloud2, TOPIC_IN, self._on_cloud, qos)
        mode = (f"map (frame {self.settings.map_frame!r}, {len(self.live_map.map)} instances, map_dir "
                f"{params.map_directory(self.settings)})" if self.live_map is not None else "per_cloud")
        self.get_logger().info(
            f"ready: mode {mode}, bundle {self._bundle_path} (input {self.segmenter.input_features}), "
            f"device {self.segmenter.device}, "
            f"{params.describe_vocabulary(self._live.vocabulary)}, subscribed to {self.resolve_topic_name(TOPIC_IN)}")
        if self._text_pending:                           # the worker loads CLIP and encodes before any cloud
            self._text_pending = False
            self._text_requested = time.perf_counter()
            self._slot.request(REQUEST_TEXT)
            self.get_logger().info("the vocabulary has names the text store lacks: CLIP loads and encodes them "
                                   "now, and clouds wait for them")
        elif self.segmenter.text.preload() is not None:   # the text came from the store: CLIP for new names
            self.get_logger().info("vocabulary text read from the text store; CLIP loads in the background")

    def _deactivate(self) -> None:
        """Stop the worker, then unsubscribe (the executor runs no callback meanwhile)."""
        self._stop_worker()
        if getattr(self, "_subscription", None) is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        if getattr(self, "_diag_timer", None) is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def _stop_worker(self) -> None:
        """Close the work slot and wait 0.5 s for the worker, so a cloud still being segmented then is dropped
        (its outputs are not published) and shutting down never waits for Mask3D. A worker loading CLIP (the
        start-up vocabulary's new names) publishes nothing for seconds and is not waited for: joining it
        doubled the exit time (1.1-1.2 s against 0.1-0.2 s)."""
        slot, worker = getattr(self, "_slot", None), getattr(self, "_worker", None)
        if slot is not None:
            slot.close()
        if worker is not None and worker.is_alive():
            segmenter = getattr(self, "segmenter", None)
            worker.join(timeout=0.0 if segmenter is not None and segmenter.text.loading else 0.5)

    def _cleanup(self, save: bool = True) -> None:
        """Save map_file (with ``save``; under the map lock, after any update in progress), then drop the
        publishers, the services, the parameter callbacks and the model (the CUDA cache is emptied)."""
        if save:
            self._log_line(self._save_map_file(when="on clean-up"))
        for name in ("_pub_instances", "_pub_markers", "_pub_cloud", "_pub_diagnostics"):
            pub = getattr(self, name, None)
            if pub is not None:
                self._destroy_publisher(pub)
                setattr(self, name, None)
        for service in getattr(self, "_map_services", []):
            self.destroy_service(service)
        self._map_services = []
        if getattr(self, "_param_callbacks", False):
            self.remove_on_set_parameters_callback(self._on_set_parameters)
            self.remove_post_set_parameters_callback(self._on_parameters_set)
            self._param_callbacks = False
        self.segmenter = self.live_map = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _shut_down(self) -> LogLine | None:
        """Leave for good from any state, even a start-up that failed half way: stop the worker and save
        map_file before any middleware call (a middleware that blocks, and is then killed, cannot lose the
        map), then deactivate and clean up. Returns the save's line for the caller to log once the node is
        destroyed (after Ctrl-C the context is gone, and a node logger would fail to reach /rosout)."""
        try:
            self._stop_worker()
            return self._save_map_file(when="on shutdown")
        finally:
            self._deactivate()
            self._cleanup(save=False)

    def _log_line(self, line: LogLine | None, logger=None) -> None:
        if line is not None:
            (logger or self.get_logger()).log(line[1], line[0])

    def _output_publisher(self, msg_type, topic: str, qos):
        """An output publisher (the managed node makes lifecycle publishers)."""
        return self.create_publisher(msg_type, topic, qos)

    def _destroy_publisher(self, publisher) -> None:
        self.destroy_publisher(publisher)

    # ---------------------------------------------------------------- start-up

    def _declare_parameters(self) -> None:
        try:
            self.declare_parameters("", params.declarations())
        except Exception as err:  # rclpy raises several types for bad overrides; all are start-up errors
            raise StartupError(f"bad parameter: {err}") from err

    def _read_settings(self) -> params.NodeSettings:
        try:
            return params.read_settings({p.name: self.get_parameter(p.name).value for p in params.PARAMETERS})
        except Exception as err:
            raise StartupError(f"bad parameter: {err}") from err

    def _load(self) -> None:
        """The model, the vocabulary's text and (map mode) the map; StartupError with one line."""
        self.segmenter = self._load_segmenter(self.settings)
        self._bundle_template = self.segmenter.cfg.prompt_template  # from the manifest (see segmenter_overrides)
        self._live = params.initial_live(self.settings, self._bundle_template)
        # names the text store holds are encoded before "ready"; new ones need CLIP (seconds to load): the
        # worker encodes them right after "ready" and clouds wait for them (_activate)
        self._text_pending = not self.segmenter.text.can_encode_now(self._live.vocabulary, self._live.prompt_template)
        if not self._text_pending:
            try:
                self._encode_text(self._live)
            except (ValueError, RuntimeError) as err:
                raise StartupError(f"cannot encode the vocabulary: {err}") from err
        self.live_map = self._load_map(self.settings) if self.settings.mode == "map" else None

    def _load_segmenter(self, settings: params.NodeSettings) -> Segmenter:
        try:
            self._bundle_path = params.resolve_bundle(settings.model_bundle)
            return Segmenter.from_bundle(self._bundle_path, device=settings.device,
                                         sparse_backend=settings.sparse_backend,
                                         files=params.checkpoint_overrides(settings),
                                         allow_unsafe=settings.allow_unsafe_checkpoints,
                                         text_store=params.text_store_directory(settings),
                                         **params.segmenter_overrides(settings))
        except Exception as err:  # FileNotFoundError, BundleError, ValueError (device, mismatch), torch load errors
            raise StartupError(f"cannot start the Segmenter (model_bundle {settings.model_bundle!r}, device "
                               f"{settings.device!r}): {err}") from err

    def _load_map(self, settings: params.NodeSettings) -> LiveMap:
        live_map = LiveMap(self.segmenter, settings.map_config, settings.max_points, settings.voxel_size)
        path = self._map_file_path()
        if path is not None and path.exists():
            try:
                live_map.load(path)
            except MapFileError as err:   # never start empty and overwrite the user's map on shutdown
                raise StartupError(f"cannot load map_file: {err}; move the file away or set map_file:=''") from err
            self.get_logger().info(f"map loaded from {path}: {len(live_map.map)} instances")
        return live_map

    # ---------------------------------------------------------------- parameters (executor thread)

    def _encode_text(self, live: params.LiveSettings) -> None:
        """The vocabulary's text (from the text store, else CLIP; then kept): at start-up and in the worker."""
        self.segmenter.text.encode(live.vocabulary, live.prompt_template)

    def _on_set_parameters(self, changes) -> SetParametersResult:
        """Validate live changes (cheap checks only: the text is encoded by the worker, off the executor)."""
        live_changes = [p for p in changes if p.name in params.LIVE]
        if not live_changes:
            return SetParametersResult(successful=True)
        try:
            with self._live_lock:
                current = self._live
            params.check_live_update(current, live_changes, self._bundle_template, self.settings)
        except ValueError as err:
            reason = str(err)
            self._warn(f"parameter change rejected: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, changes) -> None:
        live_changes = [p for p in changes if p.name in params.LIVE]
        if not live_changes:
            return
        with self._live_lock:
            self._live = params.check_live_update(self._live, live_changes, self._bundle_template, self.settings)
            live = self._live
        self._slot.request("relabel")   # the worker encodes the text; in map mode it republishes the map
        self.get_logger().info(f"live parameters now: {params.describe_vocabulary(live.vocabulary)}, "
                               f"prompt_template {live.prompt_template!r}, score_threshold {live.score_threshold}")

    # ---------------------------------------------------------------- input (executor thread)

    def _on_cloud(self, msg: PointCloud2) -> None:
        problem = input_problem(msg, self.settings.max_input_points)
        if problem is not None:
            self._reject(problem)
            return
        if self.live_map is not None and msg.header.frame_id != self.settings.map_frame:
            self._stats.add(rejected=1)
            if msg.header.frame_id not in self._warned_frames:   # one clear warning per foreign frame
                self._warned_frames.add(msg.header.frame_id)
                self.get_logger().warning(
                    f"cloud in frame {msg.header.frame_id!r} skipped: map mode needs clouds in map_frame "
                    f"{self.settings.map_frame!r} (folk_ros does not use tf2; transform upstream or set map_frame). "
                    f"Further clouds in this frame are skipped silently.")
            return
        t0 = time.perf_counter()
        try:   # map mode: every cloud in the map's coordinates (its origin fixed by the first cloud)
            origin = self.live_map.map.frame_origin if self.live_map is not None else None
            conv = cloud_from_msg(msg, default_rgb=self.settings.default_color, origin=origin,
                                  max_range=self.settings.max_range)
        except CloudFormatError as err:
            self._reject(f"cloud rejected: {err}")
            return
        n = int(msg.width) * int(msg.height)
        if conv.dropped_far:
            self._warn(f"{conv.dropped_far:,} points farther than max_range ({self.settings.max_range:g} m) from "
                       f"{'the map origin' if origin is not None else 'the cloud centre'} dropped as outliers")
        if len(conv.cloud) == 0:
            self._reject(f"cloud rejected: none of its {n:,} points is finite and within max_range")
            return
        if self.live_map is not None and origin is None:
            self.live_map.map.frame_origin = conv.origin   # before the worker sees the first cloud
        if not conv.had_color and not self._warned_no_color and self.segmenter.input_features == "xyzrgb":
            self._warned_no_color = True
            self.get_logger().warning(f"cloud has no colour fields (rgb, rgba or r/g/b), but this bundle's Mask3D was "
                                      f"trained on colour: using default_color {list(self.settings.default_color)}, "
                                      f"which costs accuracy; a geometry-only (xyz) bundle is made for such clouds "
                                      f"(reported once)")
        job = Job(header=msg.header, conv=conv, n_input=n, convert_ms=(time.perf_counter() - t0) * 1e3)
        self._stats.add(received=1)
        if self._slot.put(job) is not None:
            self._stats.add(dropped=1)
            if self._throttle.ready("dropped"):
                self.get_logger().warning(f"segmentation is slower than the input: {self._stats.snapshot().dropped} "
                                          f"clouds dropped so far (latest-only)")

    def _warn(self, text: str) -> None:
        if self._throttle.ready(text):
            self.get_logger().warning(text)

    def _reject(self, text: str) -> None:
        self._stats.add(rejected=1)
        self._warn(text)

    # ---------------------------------------------------------------- /diagnostics (executor thread)

    def _publish_diagnostics(self) -> None:
        extra = {"mode": self.settings.mode, "model bundle": str(self._bundle_path),
                 "device": str(self.segmenter.device)}
        if self.live_map is not None:
            extra["map instances"] = str(len(self.live_map.map))
        st = diagnostics.status(self._stats.snapshot(), self._diag_state,
                                name=f"{self.get_fully_qualified_name()}: segmentation",   # unique per namespace
                                hardware_id=str(self.segmenter.device),
                                worker_alive=self._worker.is_alive(),
                                max_latency_s=self.settings.diagnostics_max_latency_s, extra=extra)
        self._pub_diagnostics.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                      status=[st]))
