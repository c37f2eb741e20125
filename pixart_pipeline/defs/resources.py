"""Resources: which device the GPU stages use, and the Pipes client that launches the trainer."""


import os

import dagster as dg


class DeviceResource(dg.ConfigurableResource):
    """Device for encoding, training and evaluation: `auto` (CUDA, else MPS, else CPU), `cuda`, `mps`, `cpu`.

    Defaults to the config's `device` key; overridable per run in the launchpad.
    """

    device: str = "auto"


def build_resources(device: str) -> dict:
    env = {"PYTHONUNBUFFERED": "1"}
    # The trainer subprocess must find this package even when Dagster was started from elsewhere.
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return {
        "device": DeviceResource(device=device),
        "pipes_subprocess_client": dg.PipesSubprocessClient(env=env),
    }
