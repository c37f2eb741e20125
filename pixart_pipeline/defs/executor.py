"""The default executor: one process per step, started with spawn (safe with CUDA and threads).

Guarded (defs/guard.py): a killed run never blocks the `gpu` pool of the runs after it.
"""

import dagster as dg

from pixart_pipeline.defs.guard import guarded

executor = guarded(dg.multiprocess_executor).configured({"start_method": {"spawn": {}}})
