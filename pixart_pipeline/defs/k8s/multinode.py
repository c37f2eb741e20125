"""Multi-node training (``num_machines`` > 1) as an *indexed Job* plus a headless Service.

Why an indexed Job (``completionMode: Indexed``) and not a JobSet or a Kubeflow PyTorchJob: it is
core ``batch/v1`` (stable since Kubernetes 1.24), so it runs on any cluster the Dagster chart runs
on, with no operator or CRD to install and keep in step with torch; it is the pattern the
Kubernetes docs give for pod-to-pod jobs (a headless Service named by the pods' ``subdomain`` gives
pod ``i`` the stable name ``<job>-<i>.<service>``); and the ``kubernetes`` client has its models,
so the manifest is validated here without a cluster. A JobSet would add the Service for us and a
PyTorchJob would set ``MASTER_ADDR``, but torchrun's own c10d rendezvous needs neither.

Every pod runs the same ``torchrun`` line: ``--nnodes=num_machines --nproc_per_node=num_processes
--rdzv_backend=c10d --rdzv_endpoint=<job>-0.<service>:<port> --rdzv_id=<job>``. Pod 0 hosts the
rendezvous store (torch recognises its own host name); c10d orders the machines by host name, so
global rank 0 (the one process that talks to Dagster Pipes, ``training/report.py``) runs on pod 0.
World size = num_machines x num_processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client import ApiClient

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.k8s.settings import DeploySettings
from pixart_pipeline.defs.k8s.steps import (
    container_resources,
    data_volume,
    pod_placement,
    shm_volume,
)

TRAINER_LABEL = "pixart/trainer"  # the Service selects the Job's pods by this label
MAX_NAME = 52  # pod host names are "<job>-<index>"; a DNS label holds 63 characters


@dataclass(frozen=True)
class MultiNodeSpec:
    """What the manifest is rendered from (all of it comes from config + deployment settings)."""

    name: str  # Job name = Service name = rendezvous id
    namespace: str
    image: str
    machines: int
    processes: int
    trainer_args: list[str]  # ``-m pixart_pipeline.training <run_spec.json> --reuse-finished``
    env: dict[str, str]  # the Pipes bootstrap variables, PYTHONUNBUFFERED, settings.env

    @property
    def rendezvous_host(self) -> str:
        return f"{self.name}-0.{self.name}"


def job_name(run_id: str, run_dir_name: str) -> str:
    """``pixart-train-<run folder>-<dagster run>``: unique per attempt, a valid DNS label."""
    name = f"pixart-train-{run_dir_name[:12]}-{run_id[:8]}".lower()
    return re.sub(r"[^a-z0-9-]", "-", name)[:MAX_NAME].rstrip("-")


def multinode_spec(cfg: PipelineConfig, settings: DeploySettings, *, name: str, namespace: str,
                   image: str, trainer_args: list[str], env: dict[str, str]) -> MultiNodeSpec:
    t = cfg.training
    return MultiNodeSpec(name=name, namespace=namespace, image=image, machines=t.num_machines,
                         processes=t.num_processes, trainer_args=list(trainer_args),
                         env={**settings.env, "PYTHONUNBUFFERED": "1", **env})


def torchrun_command(spec: MultiNodeSpec, port: int) -> list[str]:
    """The same command on every pod: torchrun's c10d rendezvous assigns the ranks."""
    return [
        "python", "-m", "torch.distributed.run",
        f"--nnodes={spec.machines}",
        f"--nproc_per_node={spec.processes}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={spec.rendezvous_host}:{port}",
        f"--rdzv_id={spec.name}",
        "--max_restarts=0",  # a lost machine fails the Job; Dagster's retry resumes from a checkpoint
        *spec.trainer_args,
    ]


def service_manifest(spec: MultiNodeSpec, settings: DeploySettings) -> dict[str, Any]:
    """Headless Service: DNS names for the Job's pods (``<job>-<i>.<service>``), before they are ready."""
    return {
        "api_version": "v1", "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": {TRAINER_LABEL: spec.name}},
        "spec": {
            "cluster_ip": "None",
            "selector": {TRAINER_LABEL: spec.name},
            "publish_not_ready_addresses": True,
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port}],
        },
    }


def job_manifest(spec: MultiNodeSpec, settings: DeploySettings) -> dict[str, Any]:
    """The indexed Job: ``num_machines`` pods, each with ``num_processes`` GPUs, the shared volume."""
    volume, mount = data_volume(settings)
    container = {
        "name": "trainer",
        "image": spec.image,
        "image_pull_policy": settings.image_pull_policy,
        "command": torchrun_command(spec, settings.rendezvous_port),
        "env": [{"name": k, "value": v} for k, v in spec.env.items()],
        "env_from": [{"secret_ref": {"name": s}} for s in settings.env_secrets]
        + [{"config_map_ref": {"name": c}} for c in settings.env_config_maps],
        "ports": [{"name": "rendezvous", "container_port": settings.rendezvous_port}],
        "resources": container_resources(spec.processes, settings.gpu, settings.gpu_resource),
        "volume_mounts": [mount, {"name": "dshm", "mount_path": "/dev/shm"}],
    }
    pod_spec: dict[str, Any] = {
        "subdomain": spec.name,  # with the Service: pod i is "<job>-<i>.<job>"
        "restart_policy": "Never",
        "containers": [container],
        "volumes": [volume, shm_volume(settings)],
        "image_pull_secrets": [{"name": s} for s in settings.image_pull_secrets],
        **pod_placement(settings.gpu),
    }
    if settings.service_account_name:
        pod_spec["service_account_name"] = settings.service_account_name
    return {
        "api_version": "batch/v1", "kind": "Job",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": {TRAINER_LABEL: spec.name}},
        "spec": {
            "completion_mode": "Indexed",
            "completions": spec.machines,
            "parallelism": spec.machines,  # every machine at once: the rendezvous waits for all
            "backoff_limit": 0,  # one lost rank ends the run; never restart a single rank alone
            "ttl_seconds_after_finished": settings.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": {TRAINER_LABEL: spec.name}}, "spec": pod_spec},
        },
    }


def to_model(manifest: dict[str, Any]) -> Any:
    """The typed ``kubernetes`` client object of a snake_case manifest (``V1Job``, ``V1Service``).

    dagster-k8s's strict converter rejects any key the API model does not have, at any depth; the
    models' constructors then reject missing required fields.
    """
    from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

    model = {"Job": k8s.V1Job, "Service": k8s.V1Service}[manifest["kind"]]
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, manifest))


def render(spec: MultiNodeSpec, settings: DeploySettings) -> list[Any]:
    """[V1Service, V1Job]: create them in this order."""
    return [to_model(service_manifest(spec, settings)), to_model(job_manifest(spec, settings))]


def to_api_dicts(models: list[Any]) -> list[dict[str, Any]]:
    """camelCase dicts as the API server (and ``kubectl apply -f``) takes them."""
    return [ApiClient().sanitize_for_serialization(m) for m in models]
