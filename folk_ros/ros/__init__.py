"""Thin rclpy layer of folk_ros: the node, message conversions, markers."""
