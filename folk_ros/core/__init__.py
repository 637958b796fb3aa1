"""ROS-free core of folk_ros: clouds, Mask3D, CLIP wrapper, student, Segmenter."""
