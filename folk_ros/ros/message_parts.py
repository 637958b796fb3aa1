"""Parts of the output messages, made without what the generated constructors spend on defaults.

A rosidl message constructor builds every default sub-message before it sets the given ones (``Marker()``
~15 us, ``Pose(position=..., orientation=...)`` 2.8 us), and ``copy.copy`` goes through the generic reduce
protocol (3-3.5 us); the output modules make hundreds of parts per cloud from these instead.
"""

from __future__ import annotations

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion
from std_msgs.msg import Header
from transforms3d.euler import euler2quat


def shallow_copy(msg):
    """``copy.copy`` of a rosidl message: a new one of its class holding the same field values (a generated
    message class keeps all it holds in ``__slots__``), in 1-1.5 us."""
    cls = type(msg)
    out = cls.__new__(cls)
    for name in cls.__slots__:
        setattr(out, name, getattr(msg, name))
    return out


_EMPTY_POSE = Pose()


def pose(position: Point, orientation: Quaternion) -> Pose:
    """``Pose(position=..., orientation=...)`` without the default Point and Quaternion its constructor
    builds and drops (0.7 us against 2.8 us)."""
    out = shallow_copy(_EMPTY_POSE)
    out.position, out.orientation = position, orientation
    return out


def point(p) -> Point:
    """A geometry_msgs/Point from three numbers."""
    return Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def yaw_quaternion(yaw: float) -> Quaternion:
    """The rotation by ``yaw`` radians about +z as a geometry_msgs/Quaternion (transforms3d: w, x, y, z)."""
    w, x, y, z = euler2quat(0.0, 0.0, float(yaw))
    return Quaternion(x=float(x), y=float(y), z=float(z), w=float(w))


def copy_header(header: Header) -> Header:
    """A new Header with the same stamp and frame_id (messages must not share mutable parts)."""
    return Header(stamp=copy_time(header.stamp), frame_id=str(header.frame_id))


def copy_time(stamp: Time) -> Time:
    """A new builtin_interfaces/Time equal to ``stamp``."""
    return Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec))
