"""The worker thread of the ``folk_segmenter`` node, a mixin of
:class:`~folk_ros.ros.segmenter_runtime.SegmenterRuntime`.

It takes the latest cloud (or the start-up request to encode the vocabulary) from the node's work slot,
encodes the vocabulary's text when it changed, segments the cloud (per-cloud mode here; map mode in
:class:`~folk_ros.ros.map_mode.MapMode`), makes the three outputs with a helper thread of its own
(:func:`~folk_ros.ros.cloud_outputs.build_outputs`) and publishes them. A failure is counted and logged
once per distinct error, and the worker goes on; after the slot closes it touches nothing.
"""

from __future__ import annotations

import time
import traceback
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace

import rclpy

from folk_ros.core import torch_threads
from folk_ros.core.cloud import fit_point_budget
from folk_ros.core.mask3d.model import CloudTooSmallError
from folk_ros.ros import parameters as params
from folk_ros.ros.cloud_outputs import Outputs, build_outputs
from folk_ros.ros.work import CloudReport, Job, LatestSlot

REQUEST_TEXT = "text"
"""The worker's request to encode the start-up vocabulary (names the text store lacked) before any cloud."""


class CloudWorker:
    """The node's worker thread (see the module docstring); it uses the runtime's settings, model, publishers,
    locks and slot."""

    def _work(self) -> None:
        torch_threads.use_threads(self._threads)   # the one thread that runs torch in parallel
        # the labeled cloud is made on a helper beside the other outputs (cloud_outputs.build_outputs); the
        # helper's thread ends with this one
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="folk_segmenter_outputs") as helper:
            self._work_loop(self._slot, helper)    # this activation's slot (a later one has its own worker)

    def _work_loop(self, slot: LatestSlot, helper: Executor) -> None:
        while True:
            work = slot.take()
            if work is None:
                return
            try:
                live = self._current_live()
            except Exception as err:   # e.g. CLIP failed to load: no labels rather than labels of other names
                if slot.closed:
                    return
                self._failed(f"cannot encode the vocabulary, so no cloud is segmented until it can be: "
                             f"{type(err).__name__}: {err}", traceback.format_exc())
                continue
            if slot.closed:            # the node shut down while CLIP loaded (not waited for): touch nothing
                return
            if REQUEST_TEXT in work.requests:
                self.get_logger().info(f"vocabulary text encoded {time.perf_counter() - self._text_requested:.1f} s "
                                       f"after ready ({params.describe_vocabulary(live.vocabulary)})")
            try:
                if work.item is not None:
                    outputs, report = self._process(work.item, live, helper)
                elif self.live_map is not None and self._last_map_job is not None:
                    outputs, report = self._republish_map(live), None   # vocabulary change or reset
                else:
                    continue
            except CloudTooSmallError as err:    # bad input, not a failure: one throttled warning
                self._reject(f"cloud skipped: {err}")
                continue
            except Exception as err:  # keep the node alive; the next cloud may be fine
                if slot.closed:       # the node shut down meanwhile (its helper may be gone): drop the cloud
                    return
                self._failed(f"segmentation failed: {type(err).__name__}: {err}", traceback.format_exc())
                continue
            if not self._publish(outputs, report):
                return

    def _current_live(self) -> params.LiveSettings:
        """The committed live settings; the text is encoded here (cached) and the Segmenter's config follows."""
        with self._live_lock:
            live = self._live
        self._encode_text(live)
        self.segmenter.cfg = replace(self.segmenter.cfg, prompt_template=live.prompt_template,
                                     score_threshold=live.score_threshold)  # only this thread segments
        return live

    def _publish(self, outputs: Outputs, report: CloudReport | None) -> bool:
        """Publish one set of outputs; False when the node is shutting down. A publisher error while the
        node runs is logged (with its traceback, once per distinct error) and the worker goes on."""
        t0 = time.perf_counter()
        try:
            if outputs.labeled_cloud is not None and self._pub_cloud is not None:
                self._pub_cloud.publish(outputs.labeled_cloud)
            self._pub_markers.publish(outputs.markers)
            self._pub_instances.publish(outputs.instances)
        except Exception as err:
            if self._slot.closed or not rclpy.ok(context=self.context):
                return False
            self._failed(f"publishing failed: {type(err).__name__}: {err}", traceback.format_exc())
            return True
        if report is not None:
            report.timings["publish"] = (time.perf_counter() - t0) * 1e3
            self._stats.processed_ok(report.timings)
            if self._throttle.ready("cloud"):
                counts = self._stats.snapshot()
                self.get_logger().info(report.line(counts.processed, counts.dropped))
        return True

    def _failed(self, text: str, trace: str) -> None:
        self._stats.failure(text)
        self._error_once(text, trace)

    def _error_once(self, text: str, trace: str = "") -> None:
        """Log an error at most once per log_throttle_s (per distinct text); the first time with ``trace``."""
        if self._throttle.ready(text):
            first = text not in self._errors_traced
            self._errors_traced.add(text)
            self.get_logger().error(text + (f"\n{trace}" if trace and first else ""))

    def _process(self, job: Job, live: params.LiveSettings, helper: Executor) -> tuple[Outputs, CloudReport]:
        if self.live_map is not None:
            return self._process_map(job, live)
        t0 = time.perf_counter()
        cloud, inverse, _ = fit_point_budget(job.conv.cloud, self.settings.max_points, self.settings.voxel_size)
        timings = {"convert": job.convert_ms, "downsample": (time.perf_counter() - t0) * 1e3}
        instances = self.segmenter.segment(cloud, live.vocabulary)
        timings.update({k: v for k, v in instances.timings.items() if k != "total"})
        t0 = time.perf_counter()
        outputs = build_outputs(job.header, job.conv, job.n_input, instances, inverse, self.settings, helper)
        timings["messages"] = (time.perf_counter() - t0) * 1e3
        return outputs, CloudReport(n_input=job.n_input, n_nonfinite=job.conv.dropped_nonfinite,
                                    n_segmented=len(cloud), n_instances=len(instances), timings=timings)
