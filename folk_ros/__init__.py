"""folk_ros: open-vocabulary 3D instance segmentation (FOLK) for ROS 2.

``folk_ros.core`` is pure Python/PyTorch (no ROS imports); ``folk_ros.ros`` is
the thin rclpy layer.
"""

__version__ = "0.1.0"
