"""``python -m sdcpc_core.train`` (and ``torchrun --nproc_per_node N -m sdcpc_core.train``): ``sdcpc-train``."""
import sys

from ..tools.train import main

sys.exit(main())
