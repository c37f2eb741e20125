"""The default executor: one process per step, started with spawn (safe with CUDA and threads)."""

import dagster as dg

executor = dg.multiprocess_executor.configured({"start_method": {"spawn": {}}})
