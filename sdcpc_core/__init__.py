"""SD-CPC video semantic segmentation: model, training, evaluation and runtime (no ROS imports)."""
