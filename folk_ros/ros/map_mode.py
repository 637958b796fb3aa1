"""Map mode of the ``folk_segmenter`` node, a mixin of :class:`~folk_ros.ros.segmenter_runtime.SegmenterRuntime`.

On the worker thread: fold a cloud into the live map (Mask3D outside the map lock, the association under
it) and publish the map; on a vocabulary change or reset, re-label and republish it. On the executor: the
map services ``~/query``, ``~/reset_map`` and ``~/save_map``, which hold the map lock only for short
commits and run their torch work serially (:mod:`folk_ros.core.torch_threads`).
"""

from __future__ import annotations

import time
from pathlib import Path

from folk_ros_interfaces.srv import QueryMap, SaveMap
from rclpy.logging import LoggingSeverity
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from folk_ros.core import torch_threads
from folk_ros.ros import parameters as params
from folk_ros.ros.cloud_outputs import Outputs
from folk_ros.ros.conversions import stamp_seconds
from folk_ros.ros.map_outputs import (MapView, build_map_outputs, instances_msg, map_view, query_problem, save_path,
                                      shown_rows)
from folk_ros.ros.work import CloudReport, Job

LogLine = tuple[LoggingSeverity, str]
"""A line for the node's log, made where it cannot be logged yet."""


class MapMode:
    """The node's map mode (see the module docstring); it uses the runtime's settings, locks and slot."""

    # ---------------------------------------------------------------- map mode (worker thread)

    def _map_file_path(self) -> Path | None:
        name = self.settings.map_file
        return save_path(params.map_directory(self.settings), name) if name else None

    def _process_map(self, job: Job, live: params.LiveSettings) -> tuple[Outputs, CloudReport]:
        prepared = self.live_map.prepare(job.conv.cloud)   # Mask3D, outside the lock: services go on meanwhile
        with self._map_lock:                                 # the association and the view: tens of ms
            update = self.live_map.commit(prepared, stamp_seconds(job.header.stamp))
            self._last_map_job = job
            self._map_updates += 1
            t0 = time.perf_counter()
            view = self._map_view(live, job)
        timings = {"convert": job.convert_ms, **{k: v for k, v in update.timings.items() if k != "total"}}
        outputs = self._map_outputs(job, view)
        timings["messages"] = (time.perf_counter() - t0) * 1e3
        every = self.settings.map_save_every
        if every and self._map_updates % every == 0:
            self._save_map_file()
        return outputs, CloudReport(n_input=job.n_input, n_nonfinite=job.conv.dropped_nonfinite,
                                    n_segmented=update.segmented_points, n_instances=len(view), timings=timings,
                                    map_instances=len(self.live_map.map), update=update)

    def _map_view(self, live: params.LiveSettings, job: Job) -> MapView:
        """The shown map for ``job``'s cloud (call under the map lock)."""
        labels = self.live_map.label(live.vocabulary, live.prompt_template)
        rows = shown_rows(self.live_map, labels, live.score_threshold)
        return map_view(self.live_map, labels, live.vocabulary, rows, job.conv.cloud.xyz)

    def _map_outputs(self, job: Job, view: MapView) -> Outputs:
        outputs = build_map_outputs(job.header, job.conv, job.n_input, view, self.settings, self._published_ids)
        self._published_ids = {int(i) for i in view.ids}
        return outputs

    def _republish_map(self, live: params.LiveSettings) -> Outputs:
        """Re-label the map for the current vocabulary (one matmul) and publish it with the last cloud."""
        with self._map_lock:
            job = self._last_map_job
            view = self._map_view(live, job)
        return self._map_outputs(job, view)

    def _save_map_file(self, when: str = "") -> LogLine | None:
        """Save map_file, periodically or ``when`` something happens ("on shutdown"); nothing without a map
        (per-cloud mode, a start-up that failed before the map was loaded) or without map_file.

        A failure is never raised, so the rest of a shutdown still runs. Periodic saves log their failures;
        a save ``when`` something returns its line (severity, text) for the caller to log, because at
        shutdown the node's context may already be gone and its logger could not reach /rosout.
        """
        if getattr(self, "live_map", None) is None:
            return None
        path = self._map_file_path()
        if path is None:
            return None
        try:
            count = self._write_map(path)
        except Exception as err:   # a full disk or a bad map must not skip the rest of the clean-up
            text = f"cannot save the map to {path}: {type(err).__name__}: {err}"
            if not when:
                self._error_once(text)
                return None
            return LoggingSeverity.ERROR, text
        return (LoggingSeverity.INFO, f"map saved {when}: {count} instances to {path}") if when else None

    def _write_map(self, path: Path) -> int:
        """Save the map to ``path`` (after any update in progress); the number of instances saved."""
        with torch_threads.serial(), self._map_lock:   # also called on the executor (services, cleanup)
            self.live_map.save(path)
            return len(self.live_map.map)

    # ---------------------------------------------------------------- map services (service group thread)

    def _on_query(self, request: QueryMap.Request, response: QueryMap.Response) -> QueryMap.Response:
        phrases = list(request.phrases)
        problem = query_problem(phrases, int(request.max_results), float(request.min_score))
        if problem is not None:
            response.success, response.message = False, f"query refused: {problem}"
            return response
        try:
            with self._live_lock:
                live = self._live
            with torch_threads.serial():   # on the executor: no second OpenMP team beside the worker's
                text = self.live_map.encode_phrases(phrases)     # outside the map lock (CLIP has its own)
                reference = self.live_map.vocabulary_text(live.vocabulary, live.prompt_template)
                with self._map_lock:
                    k, min_score = int(request.max_results), float(request.min_score)
                    tau = self.segmenter.cfg.temperature
                    rows, scores, phrase = self.live_map.map.query(text, k, min_score, reference, tau)
                    labels = self.live_map.label(live.vocabulary, live.prompt_template)
                    view = map_view(self.live_map, labels, live.vocabulary, rows)
                    if self.live_map.map.frame_origin is not None:
                        view = view.shifted(self.live_map.map.frame_origin)
                    total = len(self.live_map.map)
                    last = self._last_map_job
            header = last.header if last is not None else Header(frame_id=self.settings.map_frame)
        except Exception as err:  # never crash the executor on a request
            response.success, response.message = False, f"query failed: {type(err).__name__}: {err}"
            return response
        answer = instances_msg(header, view)
        response.header, response.instances = answer.header, list(answer.instances)
        response.scores = [float(s) for s in scores]
        response.matched_phrases = [phrases[int(p)] for p in phrase]
        response.success, response.message = True, f"{len(rows)} of {total} instances returned"
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with torch_threads.serial(), self._map_lock:
            removed = len(self.live_map.map)
            self.live_map.reset()
        self._slot.request("republish")
        response.success, response.message = True, f"map reset: {removed} instances removed"
        self.get_logger().info(response.message)
        return response

    def _on_save(self, request: SaveMap.Request, response: SaveMap.Response) -> SaveMap.Response:
        name = request.file_name or self.settings.map_file
        if not name:
            response.success, response.message = False, "no file_name given and the map_file parameter is empty"
            return response
        try:
            path = save_path(params.map_directory(self.settings), name)
            count = self._write_map(path)
        except (ValueError, OSError) as err:
            response.success, response.message = False, f"map not saved: {err}"
            return response
        response.success, response.path = True, str(path)
        response.message = f"saved {count} instances to {path}"
        self.get_logger().info(response.message)
        return response
