"""``folk_segmenter`` as a managed (lifecycle) node, for stacks that bring perception up with a lifecycle
manager (e.g. nav2_lifecycle_manager, or ``ros2 lifecycle set``).

Same parameters, topics and services as :mod:`folk_ros.ros.node`; the work is split over the transitions
(rclpy's lifecycle API, ``~/change_state`` and ``~/get_state`` services):

    configure    read and check the parameters, load the model bundle (and map_file in map mode), encode the
                 vocabulary, create the (lifecycle) publishers and the map services; FAILURE with one log
                 line when a file is missing or a parameter is wrong (the node stays unconfigured)
    activate     start the worker and /diagnostics, subscribe to cloud_in; outputs are published
    deactivate   unsubscribe and stop the worker (a cloud in progress is dropped)
    cleanup      save map_file, free the model (CUDA cache emptied), drop publishers and services
    shutdown     deactivate and clean up as needed

Run::

    python -m folk_ros.ros.lifecycle_node --ros-args --params-file config/segment.yaml
    ros2 run folk_ros folk_segmenter_managed --ros-args --params-file config/segment.yaml   (installed)
    ros2 launch folk_ros segment.launch.py managed:=true
    ros2 lifecycle set /folk_segmenter configure && ros2 lifecycle set /folk_segmenter activate
"""

from __future__ import annotations

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from folk_ros.ros import parameters as params
from folk_ros.ros.node import exit_fast, parse_cli, spin_node
from folk_ros.ros.segmenter_runtime import SegmenterRuntime, StartupError


class ManagedSegmenterNode(SegmenterRuntime, LifecycleNode):
    """``folk_segmenter`` driven by lifecycle transitions (see the module docstring). Construction only
    declares the parameters (StartupError when an override is malformed)."""

    def __init__(self, **node_kwargs):
        super().__init__(params.NODE_NAME, **node_kwargs)
        self._declare_parameters()
        self._configured = False
        self.get_logger().info("unconfigured: waiting for the configure transition")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as err:
            self.get_logger().error(f"configure failed: {err}")
            self._cleanup(save=False)           # whatever was created before the error goes again
            return TransitionCallbackReturn.FAILURE
        self._configured = True
        self.get_logger().info(f"configured: bundle {self._bundle_path}, device {self.segmenter.device}, "
                               f"mode {self.settings.mode}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return super().on_activate(state)       # activates the lifecycle publishers

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.get_logger().info("deactivated: not subscribed, nothing published")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self._configured = False
        self.get_logger().info("cleaned up: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._log_line(self._shut_down())
        self._configured = False
        return TransitionCallbackReturn.SUCCESS

    def _output_publisher(self, msg_type, topic: str, qos):
        return self.create_lifecycle_publisher(msg_type, topic, qos)

    def _destroy_publisher(self, publisher) -> None:
        self.destroy_lifecycle_publisher(publisher)

    def destroy_node(self) -> None:
        """Leave cleanly from any state: stop the worker and save map_file when configured."""
        logger = self.get_logger()
        line = self._shut_down()
        self._configured = False
        super().destroy_node()
        self._log_line(line, logger)


def main(argv: list[str] | None = None) -> int:
    """``folk_segmenter_managed`` / ``python -m folk_ros.ros.lifecycle_node``: returns the exit code."""
    argv = parse_cli(argv, __doc__)
    return 1 if argv is None else spin_node(ManagedSegmenterNode, argv)


def run(argv: list[str] | None = None) -> None:
    """The console entry point: :func:`main`, then a fast exit (:func:`folk_ros.ros.node.exit_fast`)."""
    exit_fast(main(argv))


if __name__ == "__main__":
    run()
