"""Test double: the real ``folk_segmenter`` node whose first ``instances`` publish raises.

``python -m test.faulty_node --ros-args ...`` runs :func:`folk_ros.ros.node.run` unchanged except that the
first InstanceArray handed to a publisher raises RuntimeError("injected publish failure"), as a middleware
error would. The node must log it once with its traceback and go on serving the next cloud.
"""

from folk_ros_interfaces.msg import InstanceArray
from rclpy.publisher import Publisher

from folk_ros.ros import node

_publish = Publisher.publish
_failed = []


def _fail_first_instances(self, msg):
    if isinstance(msg, InstanceArray) and not _failed:
        _failed.append(msg)
        raise RuntimeError("injected publish failure")
    return _publish(self, msg)


if __name__ == "__main__":
    Publisher.publish = _fail_first_instances
    node.run()
