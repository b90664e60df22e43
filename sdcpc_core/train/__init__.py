"""Training: configuration, data stream, losses, optimiser and the trainer (``sdcpc-train``).

* ``config``: typed YAML configuration (``load_config``);
* ``data``: the indexed clip stream split over processes and loader workers;
* ``losses``: static / temporal cross-entropy and MCP-CL;
* ``optim``: AdamW parameter groups and the poly schedule with warm-up;
* ``trainer``: ``Trainer`` (single process or ``torchrun`` with DistributedDataParallel);
* ``checkpointing`` and ``logs``: atomic checkpoints, ``log.jsonl``, TensorBoard, ``training.png``.

Submodules are imported on use, so ``sdcpc_core.train.losses`` stays light.
"""
