"""Per-step Kubernetes config for ``dagster_k8s.k8s_job_executor``: one pod per step.

Two layers, both in dagster-k8s's own vocabulary (``UserDefinedDagsterK8sConfig`` /
``DagsterK8sJobConfig`` keys, snake_case Kubernetes fields):
- ``executor_config``: what every step pod shares (image, namespace, service account, the shared
  PVC with ``output_dir``, the caches and the Hub cache, env, secrets);
- ``step_k8s_config``: what one stage's pod asks for, as its ``dagster-k8s/config`` op tag. GPU
  stages get ``nvidia.com/gpu`` (the encoders and the trainer one per process; evaluation one), the
  GPU node pool and a RAM-backed ``/dev/shm`` for NCCL; data stages get no GPU and modest CPU/memory.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.k8s.settings import DeploySettings, NodePool
from pixart_pipeline.stages import EVALUATION_REPORT, TRAINED_CHECKPOINT, Stage

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY
DATA_VOLUME = "pixart-data"
SHM_VOLUME = "dshm"


def gpus_for(stage: Stage, cfg: PipelineConfig) -> int:
    """GPUs the stage's own pod requests.

    The encoders and the single-machine trainer run ``num_processes`` ranks with torchrun inside the
    pod, one GPU each; evaluation samples on one. With ``num_machines`` > 1 the trainer's ranks run
    in their own Job (``multinode.py``) and the step pod only launches and watches it: no GPU.
    """
    t = cfg.training
    if not stage.gpu:
        return 0
    if stage is EVALUATION_REPORT:
        return 1
    if stage is TRAINED_CHECKPOINT and t.num_machines > 1:
        return 0
    return t.num_processes


def scale_quantity(quantity: str, factor: int) -> str:
    """``"8Gi" x 4 -> "32Gi"``, ``"500m" x 2 -> "1000m"``: a per-GPU Kubernetes quantity times GPUs."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity.strip())
    if not match:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity like '8', '500m' or '16Gi'")
    number = float(match.group(1)) * factor
    return f"{int(number) if number.is_integer() else number}{match.group(2)}"


def container_resources(gpus: int, pool: NodePool, gpu_resource: str) -> dict[str, dict[str, str]]:
    """``V1ResourceRequirements`` fields: GPU pods ask for ``gpus`` x the pool's per-GPU CPU/memory.

    Extended resources (``nvidia.com/gpu``) must have request == limit, and memory gets a limit so
    an out-of-memory step is killed alone instead of the node; CPU is left unlimited (no throttling).
    """
    factor = max(gpus, 1)
    requests = {"cpu": scale_quantity(pool.cpu, factor), "memory": scale_quantity(pool.memory, factor)}
    limits = {"memory": requests["memory"]}
    if gpus:
        requests[gpu_resource] = limits[gpu_resource] = str(gpus)
    return {"requests": requests, "limits": limits}


def pod_placement(pool: NodePool) -> dict[str, Any]:
    """``pod_spec_config`` fields that place the pod on the pool's nodes."""
    placement: dict[str, Any] = {}
    if pool.node_selector:
        placement["node_selector"] = dict(pool.node_selector)
    if pool.tolerations:
        placement["tolerations"] = [dict(t) for t in pool.tolerations]
    return placement


def shm_volume(settings: DeploySettings) -> dict[str, Any]:
    return {"name": SHM_VOLUME, "empty_dir": {"medium": "Memory", "size_limit": settings.shm_size}}


def step_k8s_config(stage: Stage, cfg: PipelineConfig, settings: DeploySettings) -> dict[str, Any]:
    """The ``dagster-k8s/config`` value of one stage's step (``USER_DEFINED_K8S_JOB_CONFIG_SCHEMA``)."""
    gpus = gpus_for(stage, cfg)
    pool = settings.gpu if gpus else settings.cpu
    container: dict[str, Any] = {"resources": container_resources(gpus, pool, settings.gpu_resource)}
    pod_spec = pod_placement(pool)
    if gpus:
        container["volume_mounts"] = [{"name": SHM_VOLUME, "mount_path": "/dev/shm"}]
        pod_spec["volumes"] = [shm_volume(settings)]
    return {
        "container_config": container,
        "pod_spec_config": pod_spec,
        "pod_template_spec_metadata": {"labels": {"pixart/stage": stage.name, "pixart/gpus": str(gpus)}},
        # a failed step is retried by Dagster (which re-checks what is done), not by the Job controller
        "job_spec_config": {"backoff_limit": 0, "ttl_seconds_after_finished": settings.ttl_seconds_after_finished},
    }


def step_tags(stage: Stage, cfg: PipelineConfig, settings: DeploySettings) -> dict[str, str]:
    """The op tags of a stage's asset: its ``dagster-k8s/config`` as JSON (tags are strings)."""
    return {K8S_CONFIG_TAG: json.dumps(step_k8s_config(stage, cfg, settings), sort_keys=True)}


def data_volume(settings: DeploySettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shared PVC as a (``V1Volume``, ``V1VolumeMount``) pair of snake_case dicts."""
    return ({"name": DATA_VOLUME, "persistent_volume_claim": {"claim_name": settings.claim_name}},
            {"name": DATA_VOLUME, "mount_path": settings.mount_path})


# Variables a step pod needs to load the same code location the way this process did.
FORWARDED_ENV = ("PIXART_CONFIG", "PIXART_K8S_SETTINGS")


def step_env(settings: DeploySettings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Every step pod's plain variables: ``PIXART_EXECUTOR=k8s`` (a step pod loads the definitions
    again and must build the same ones), this process's ``PIXART_CONFIG`` / ``PIXART_K8S_*``, then
    the settings' ``env``."""
    environ = dict(os.environ if environ is None else environ)
    forwarded = {k: v for k, v in environ.items() if k in FORWARDED_ENV or k.startswith("PIXART_K8S_")}
    return {"PIXART_EXECUTOR": "k8s", **forwarded, **settings.env}


def executor_config(settings: DeploySettings, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``k8s_job_executor``'s config: what every step pod shares."""
    volume, mount = data_volume(settings)
    config: dict[str, Any] = {
        "image_pull_policy": settings.image_pull_policy,
        "image_pull_secrets": [{"name": s} for s in settings.image_pull_secrets],
        "env_vars": [f"{k}={v}" for k, v in sorted(step_env(settings, environ).items())],
        "env_secrets": list(settings.env_secrets),
        "env_config_maps": list(settings.env_config_maps),
        "volumes": [volume],
        "volume_mounts": [mount],
        "labels": {"app.kubernetes.io/part-of": "pixart-pipeline"},
        # the default of a step without its own tag (the asset checks): the CPU pool's modest size
        "resources": container_resources(0, settings.cpu, settings.gpu_resource),
    }
    optional = {"job_image": settings.image, "job_namespace": settings.namespace,
                "service_account_name": settings.service_account_name, "max_concurrent": settings.max_concurrent}
    return config | {k: v for k, v in optional.items() if v is not None}
