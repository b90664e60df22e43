"""ROS 2 front end of SD-CPC: the segment node and rosbag tools (rclpy)."""
