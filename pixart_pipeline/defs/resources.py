"""Resources: which device the GPU stages use, and the Pipes client that launches the trainer."""


import dagster as dg


class DeviceResource(dg.ConfigurableResource):
    """Device for encoding, training and evaluation: `auto` (CUDA, else MPS, else CPU), `cuda`, `mps`, `cpu`.

    Defaults to the config's `device` key; overridable per run in the launchpad.
    """

    device: str = "auto"


def build_resources(device: str) -> dict:
    # The client passes os.environ through; unbuffered output keeps the trainer's lines in order.
    return {
        "device": DeviceResource(device=device),
        "pipes_subprocess_client": dg.PipesSubprocessClient(env={"PYTHONUNBUFFERED": "1"}),
    }
