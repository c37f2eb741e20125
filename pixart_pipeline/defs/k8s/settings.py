"""Deployment settings for ``PIXART_EXECUTOR=k8s``: where and how the step pods run.

Everything here is about the cluster (image, namespace, service account, node pools, the shared
volume), never about the model, so it lives outside ``config.json`` and is in no fingerprint:
moving the same config to another cluster re-materialises nothing.

Sources, later ones winning:
1. the YAML (or JSON) file named by ``$PIXART_K8S_SETTINGS`` (``deploy/k8s/settings.yaml`` is the
   documented example);
2. ``$PIXART_K8S_<FIELD>`` for the scalar top-level fields (``PIXART_K8S_IMAGE``,
   ``PIXART_K8S_NAMESPACE``, ``PIXART_K8S_CLAIM_NAME`` ...), so a Helm value can override one key.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pixart_pipeline.config import ConfigError

SETTINGS_ENV = "PIXART_K8S_SETTINGS"
ENV_PREFIX = "PIXART_K8S_"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodePool(_Strict):
    """Where one kind of step is scheduled and what its container asks for.

    ``cpu``/``memory`` are Kubernetes quantities ("4", "500m", "16Gi"); for the GPU pool they are
    per GPU (a trainer with 4 processes asks for 4x), since each process needs its own loader and
    host copy of the batch.
    """

    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []  # V1Toleration fields, e.g. {"key": "nvidia.com/gpu", ...}
    cpu: str = "2"
    memory: str = "8Gi"


class DeploySettings(_Strict):
    """The k8s deployment of this code location (see module docstring for where it comes from)."""

    # Empty: the step pods use the image the code location runs in (Dagster passes it on).
    image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = []
    namespace: str | None = None  # None: the namespace the run pod is in
    service_account_name: str | None = None
    # The PVC that holds config.json, output_dir, the caches and the Hub cache; every step pod and
    # every trainer pod mounts it at the same path, so the absolute paths that one stage records
    # (run_dir, store roots) are valid in the next one. Must be ReadWriteMany for multi-node runs.
    claim_name: str = "pixart-data"
    mount_path: str = "/data"
    # Plain variables for every step pod (PIXART_CONFIG, HF_HOME ...) and Secrets/ConfigMaps whose
    # keys become variables (WANDB_API_KEY, HF_TOKEN: never written into a manifest by us).
    env: dict[str, str] = {}
    env_secrets: list[str] = []
    env_config_maps: list[str] = []
    gpu_resource: str = "nvidia.com/gpu"
    gpu: NodePool = NodePool(cpu="8", memory="32Gi")
    cpu: NodePool = NodePool()
    # /dev/shm for NCCL and torch's shared-memory tensors; a container's default (64Mi) is too small.
    shm_size: str = "16Gi"
    max_concurrent: int | None = Field(None, ge=1)  # step pods at once per run (None: no limit)
    # multi-node training (num_machines > 1): the c10d rendezvous port on rank 0's pod
    rendezvous_port: int = Field(29400, ge=1, le=65535)
    ttl_seconds_after_finished: int = Field(86400, ge=0)


def load_settings(environ: dict[str, str] | None = None) -> DeploySettings:
    """Read the settings file (if any) and the ``PIXART_K8S_*`` overrides; errors name the key."""
    environ = dict(os.environ if environ is None else environ)
    path = environ.get(SETTINGS_ENV)
    raw: dict[str, Any] = _read(Path(path)) if path else {}
    source = path or "deployment settings"
    scalar = {name for name, f in DeploySettings.model_fields.items() if f.annotation in (str, int, str | None, int | None)}
    for name in sorted(scalar):
        if (value := environ.get(ENV_PREFIX + name.upper())) is not None:
            raw[name] = value
            source = f"{source} (+ ${ENV_PREFIX}{name.upper()})"
    try:
        return DeploySettings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"${SETTINGS_ENV} names {path}, which is not a file")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _explain(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid Kubernetes deployment settings"]
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        hint = ""
        if err["type"] == "extra_forbidden":
            fields = list(DeploySettings.model_fields) + list(NodePool.model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        lines.append(f"  - {key}: {err['msg']}{hint}")
    return "\n".join(lines)
