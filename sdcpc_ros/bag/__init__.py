"""rosbag2 tools of the segment node: ``sdcpc-bag synth | eval | eval --live | play`` (``cli``).

Modules (import what you use: only ``offline``, ``live`` and ``play`` need rclpy):

* ``bagfiles``: reading (``BagReader``) and atomic writing (``BagWriter``) of rosbag2 bags with ``rosbags``;
* ``synth``: a synthetic drive as a bag (images, camera_info, ground-truth labels);
* ``offline``: every frame of a bag through the segment node's pipeline, scored and written;
* ``play``: publishing a bag into the ROS 2 graph with its recorded timing;
* ``live``: playing a bag to a running segment node, recording and scoring its masks;
* ``scoring``: topics, outputs, label matching and reports shared by the two evaluations.
"""
