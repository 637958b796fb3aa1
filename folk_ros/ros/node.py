"""The ``folk_segmenter`` node: point clouds in, labeled instances out (FOLK inference, paper 3.3).

Topics (relative names; remap ``cloud_in`` to your mapping node's output)::

    cloud_in       sensor_msgs/PointCloud2                    subscribed (QoS from qos_reliability/qos_depth)
    instances      folk_ros_interfaces/InstanceArray          one per processed cloud, same header
    markers        visualization_msgs/MarkerArray             per instance a box + label
    labeled_cloud  sensor_msgs/PointCloud2                    point i = input point i (row-major):
                                                              x, y, z, rgb by label, instance_id,
                                                              label_index, score (NaN x,y,z stay NaN)

Two modes (parameter ``mode``):

- ``per_cloud``: every cloud is segmented on its own; instance ids are the rows of one InstanceArray and
  markers start with DELETEALL.
- ``map``: clouds in ``map_frame`` update a live object map (:class:`~folk_ros.core.live_map.LiveMap`):
  only what changed since the last cloud is segmented, objects keep stable ids, ``instances`` carries the
  whole map, markers are replaced in place per id, and a vocabulary change re-labels and republishes the
  map at once. Services ``~/query`` (folk_ros_interfaces/QueryMap), ``~/reset_map`` (std_srvs/Trigger)
  and ``~/save_map`` (folk_ros_interfaces/SaveMap, files only inside ``map_dir``).

Threading: the subscription callback only checks and converts the message (``cloud_from_msg``) and
puts it into a latest-only :class:`~folk_ros.ros.work.LatestSlot`; a worker thread takes it, runs the
Segmenter (or the live map) and publishes. A cloud that arrives while another waits replaces it (counted
as dropped and reported at a throttle), so the (single-threaded) executor keeps serving the subscription,
the parameter services and the map services while a cloud is segmented: in map mode the worker segments
outside the map lock and holds it only to fold the result in (:meth:`LiveMap.commit`) and copy what it
publishes, so a query waits tens of milliseconds at most. Live parameters (``vocabulary``,
``prompt_template``, ``score_threshold``) are validated in the on-set callback; the text is encoded by
the worker (never on the executor; at start-up, names the text store lacks are encoded by it right after
ready, before any cloud), which reads the committed
:class:`~folk_ros.ros.parameters.LiveSettings` before every cloud. The worker is the only thread that runs
torch on ``num_threads`` threads: the model loads on a thread of its own and the map services' torch work
on the executor runs serially, because a second OpenMP team made Mask3D about twice as slow
(:mod:`folk_ros.core.torch_threads`).

Clouds above ``max_points`` are voxel-downsampled before Mask3D (:func:`fit_point_budget`), and the
masks are mapped back to every input point through the voxel inverse map
(:func:`~folk_ros.ros.cloud_outputs.instance_points`).

Run::

    python -m folk_ros.ros.node --ros-args --params-file config/segment.yaml
    ros2 run folk_ros folk_segmenter --ros-args --params-file config/segment.yaml   (installed)
"""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

import rclpy
import rclpy.logging
import rclpy.utilities
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from folk_ros.core.cloud import fit_point_budget
from folk_ros.ros import parameters as params
from folk_ros.ros.segmenter_runtime import (SERVICE_QUERY, SERVICE_RESET, SERVICE_SAVE, TOPIC_DIAGNOSTICS, TOPIC_IN,
                                            TOPIC_INSTANCES, TOPIC_LABELED, TOPIC_MARKERS, SegmenterRuntime,
                                            StartupError)

__all__ = ["SegmenterNode", "StartupError", "main", "run", "fit_point_budget", "TOPIC_IN",
           "TOPIC_INSTANCES", "TOPIC_MARKERS", "TOPIC_LABELED", "TOPIC_DIAGNOSTICS", "SERVICE_QUERY",
           "SERVICE_RESET", "SERVICE_SAVE"]


class SegmenterNode(SegmenterRuntime, Node):
    """``folk_segmenter``: see the module docstring. Configured and active once constructed; raises
    StartupError (one line) when it cannot start."""

    def __init__(self, **node_kwargs):
        super().__init__(params.NODE_NAME, **node_kwargs)
        self._declare_parameters()
        self._configure()
        self._activate()

    def destroy_node(self) -> None:
        """Stop the worker, save map_file, free the model, destroy the node (see ``_shut_down``)."""
        logger = self.get_logger()
        line = self._shut_down()
        super().destroy_node()
        self._log_line(line, logger)   # the node's logger, no longer tied to its /rosout publisher


# ---------------------------------------------------------------------------------------------
# entry point


def parse_cli(argv: list[str] | None, doc: str) -> list[str] | None:
    """The arguments for rclpy (``--help`` prints the parameter table and exits), or None after one error
    line when the ``--ros-args`` cannot be parsed."""
    argv = list(sys.argv if argv is None else argv)
    try:
        non_ros = rclpy.utilities.remove_ros_args(argv)[1:]
    except Exception as err:  # rclpy's RCLInvalidROSArgsError, e.g. a -p value that is not YAML
        detail = str(err).split(", at /")[0]
        rclpy.logging.get_logger(params.NODE_NAME).error(f"bad --ros-args: {detail} (quote the value: "
                                                         f"-p 'name:=\"value\"')")
        return None
    parser = argparse.ArgumentParser(prog=params.NODE_NAME, description=doc.split("\n")[0],
                                     epilog=params.help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(non_ros)
    return argv


def spin_node(make_node: Callable[[], Node], argv: list[str]) -> int:
    """Init rclpy, build the node, spin it until Ctrl-C or shutdown, and clean up; the exit code (1 when
    the node cannot start, with its one-line error)."""
    rclpy.init(args=argv)
    node = executor = None
    try:
        try:
            node = make_node()
        except StartupError as err:
            rclpy.logging.get_logger(params.NODE_NAME).error(str(err))
            return 1
        # one thread: callbacks only convert, check and answer from the map (its lock is held for short
        # commits only); rclpy's MultiThreadedExecutor took cloud messages 3x slower, so a flood of bad
        # messages pushed good clouds out of the subscription's queue
        executor = SingleThreadedExecutor()
        rclpy.spin(node, executor=executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C under `ros2 launch` delivers two SIGINTs (the terminal's and the one launch forwards): the
        # second must not interrupt the clean-up (or kill the process with the default handler)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()  # first: the rosout publisher goes with it, the line below is stderr only
            rclpy.logging.get_logger(params.NODE_NAME).info("shut down")
        rclpy.try_shutdown()
    return 0


def exit_fast(code: int) -> NoReturn:
    """End the process with ``code`` once everything is closed: the exit handlers run and the streams are
    flushed; what is skipped is the interpreter's teardown of torch and friends (over a second here), so
    a Ctrl-C ends the process well inside launch's 5 s SIGTERM grace."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """``folk_segmenter`` / ``python -m folk_ros.ros.node``: returns the exit code (0, or 1 on start-up errors)."""
    argv = parse_cli(argv, __doc__)
    return 1 if argv is None else spin_node(SegmenterNode, argv)


def run(argv: list[str] | None = None) -> None:
    """The console entry point: :func:`main`, then :func:`exit_fast`."""
    exit_fast(main(argv))


if __name__ == "__main__":
    run()
