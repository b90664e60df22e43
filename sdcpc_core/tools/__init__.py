"""Command-line tools of sdcpc_core (installed as console scripts, e.g. ``sdcpc-model-info``)."""
