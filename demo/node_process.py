"""The folk_segmenter node as a subprocess, as the demo, the tests and the benchmarks start it: its
``--ros-args``, its per-cloud log lines parsed, and its labeled cloud read back as a structured array.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from folk_ros.core.pointcloud2 import NUMPY_CODE

REPO = Path(__file__).resolve().parents[1]


class NodeProcess:
    """The folk_segmenter node as a subprocess, its output in ``log_path``.

    ``module``: what ``python -m`` runs (the tests' ``test.slow_node`` wraps the node).
    """

    def __init__(self, ros_args: list[str], log_path: Path, module: tuple[str, ...] = ("folk_ros.ros.node",)):
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
               "RCUTILS_COLORIZED_OUTPUT": "0", "PYTHONFAULTHANDLER": "1"}   # a crash leaves its stacks
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", *module, "--ros-args", *ros_args],
                                     cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def trouble(self, errors_before: int = 0) -> str | None:
        """Why waiting for the node is pointless: it exited, or logged an error since ``errors_before``."""
        if self.proc.poll() is not None:
            return f"the node exited with code {self.proc.returncode}"
        errors = self.errors()
        return f"the node logged an error: {errors[-1]}" if len(errors) > errors_before else None

    def errors(self) -> list[str]:
        """The node's [ERROR] log lines so far."""
        return [line.strip() for line in self.log().splitlines() if "[ERROR]" in line]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace: float = 10.0) -> list[str]:
        """SIGINT, then SIGTERM, then SIGKILL, ``grace`` s apart (an rclpy process may miss one signal:
        ../shared/notes/ros2-from-pypi.md); returns the signals sent."""
        sent = []
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            sent.append(sig.name)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        self._log.close()
        return sent

    @staticmethod
    def how_stopped(sent: list[str]) -> str:
        """``sent`` (what :meth:`stop` returned) in words: 'SIGINT', 'SIGINT then SIGTERM', 'already exited'."""
        return " then ".join(sent) or "already exited"


def node_arguments(args: argparse.Namespace, bundle: Path) -> list[str]:
    """The node's --ros-args: the documented yaml, then the demo's overrides (later ones win)."""
    ros = ["--params-file", str(REPO / "config/segment.yaml"), "-r", f"__ns:={args.namespace}",
           "-p", f"model_bundle:={bundle}", "-p", f"device:={args.device}", "-p", f"num_threads:={args.threads}",
           "-p", "log_throttle_s:=0.0"]   # a per-cloud log line for every cloud (its stage timings)
    if args.vocabulary:
        ros += ["-p", f"vocabulary:={json.dumps(args.vocabulary)}"]   # a JSON list is a YAML flow list
    for extra in args.param:
        ros += ["-p", extra]
    return ros


_CLOUD_LINE = re.compile(r"cloud ([\d,]+) pts \(([\d,]+) non-finite, ([\d,]+) segmented\) -> (.*?) "
                         r"\| ms: (.*?) \| total ([\d.]+) \| processed (\d+), dropped (\d+)")


@dataclass(frozen=True)
class NodeReport:
    """The node's per-cloud log line (folk_ros.ros.node.CloudReport.line), parsed."""

    points: int
    segmented: int
    instances: int
    stages_ms: dict[str, float]
    total_ms: float
    processed: int
    found: str = ""   # what the line says was found ("12 instances", or the map's update in map mode)


def node_reports(log: str) -> dict[int, NodeReport]:
    """{processed count: report} of every per-cloud line in the node's log."""
    out = {}
    for m in _CLOUD_LINE.finditer(log):
        stages = {name: float(ms) for name, ms in re.findall(r"([a-z_]+) ([\d.]+)", m.group(5))}
        instances = int(re.search(r"(\d+) instances", m.group(4)).group(1))
        out[int(m.group(7))] = NodeReport(points=int(m.group(1).replace(",", "")),
                                          segmented=int(m.group(3).replace(",", "")), instances=instances,
                                          stages_ms=stages, total_ms=float(m.group(6)), processed=int(m.group(7)),
                                          found=m.group(4))
    return out


def wait_for_report(node: NodeProcess, processed: int, timeout: float = 10.0) -> NodeReport | None:
    """The log line of the ``processed``-th cloud (written just after the outputs are published)."""
    deadline = time.monotonic() + timeout
    while True:
        report = node_reports(node.log()).get(processed)
        if report is not None or time.monotonic() > deadline or node.trouble():
            return report
        time.sleep(0.05)


def point_fields(msg) -> np.ndarray:
    """A PointCloud2's points as a structured array (one field per PointField; packed rgb read as uint32)."""
    if msg.row_step != msg.width * msg.point_step:
        raise ValueError(f"row_step {msg.row_step} != width {msg.width} x point_step {msg.point_step}")
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        code = "u4" if f.name in ("rgb", "rgba") else NUMPY_CODE[f.datatype]
        names.append(f.name)
        formats.append(order + code)
        offsets.append(f.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    return np.frombuffer(msg.data, dtype, count=msg.width * msg.height)
