"""Multi-node training: the indexed Job + headless Service, validated against the Kubernetes API
models, and the torchrun rendezvous wiring, read by torch's own launcher and exercised for real
(the pods run as local processes: c10d rendezvous, a gloo process group, Dagster Pipes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import dagster as dg
import pytest
from kubernetes import client as k8s
from torch.distributed.run import config_from_args, get_args_parser

from pixart_pipeline.config import load_config
from pixart_pipeline.defs.k8s.launch import run_multinode
from pixart_pipeline.defs.k8s.multinode import (
    MultiNodeSpec,
    job_manifest,
    job_name,
    multinode_spec,
    render,
    to_api_dicts,
    to_model,
)
from pixart_pipeline.defs.k8s.settings import DeploySettings, load_settings
from pixart_pipeline.training.stage import PreparedRun
from demo_copy import copy_demo

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "deploy" / "k8s" / "settings.yaml"
PROBE = Path(__file__).with_name("rank_probe.py")


def rendered(tmp_path: Path, machines: int, processes: int) -> tuple[MultiNodeSpec, k8s.V1Service, k8s.V1Job]:
    cfg = load_config(copy_demo(tmp_path, config={"num_machines": machines, "num_processes": processes}))
    settings = load_settings({"PIXART_K8S_SETTINGS": str(SETTINGS), "PIXART_K8S_IMAGE": "registry.example/p:1"})
    name = job_name("3f2a9c1e-0000-4000-8000-000000000000", "0123456789abcdef")
    spec = multinode_spec(cfg, settings, name=name, namespace="pixart", image=settings.image,
                          trainer_args=["-m", "pixart_pipeline.training", "/data/runs/r/run_spec.json", "--reuse-finished"],
                          env={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"})
    service, job = render(spec, settings)
    return spec, service, job


def launch_config(command: list[str]):
    """How torchrun itself reads a pod's command: (LaunchConfig, program, program args)."""
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    # config_from_args sets OMP_NUM_THREADS=1 in this process's environment when nproc_per_node > 1;
    # every later subprocess of the suite would inherit it (a trainer on 1 thread rounds differently
    # from the in-process run it is compared with), so the environment is put back.
    with mock.patch.dict(os.environ):
        return config_from_args(get_args_parser().parse_args(command[3:]))


def test_manifest_is_an_indexed_job_of_gpu_pods_behind_a_headless_service(tmp_path):
    spec, service, job = rendered(tmp_path, machines=3, processes=4)
    assert isinstance(service, k8s.V1Service) and isinstance(job, k8s.V1Job)
    assert job.spec.completion_mode == "Indexed" and job.spec.completions == job.spec.parallelism == 3
    assert job.spec.backoff_limit == 0
    pod = job.spec.template.spec
    (trainer,) = pod.containers
    assert trainer.resources.limits["nvidia.com/gpu"] == trainer.resources.requests["nvidia.com/gpu"] == "4"
    assert trainer.image == "registry.example/p:1"
    assert {m.name: m.mount_path for m in trainer.volume_mounts} == {"pixart-data": "/data", "dshm": "/dev/shm"}
    assert {v.name for v in pod.volumes} == {"pixart-data", "dshm"}
    assert pod.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    env = {e.name: e.value for e in trainer.env}
    assert env["DAGSTER_PIPES_CONTEXT"] == "ctx" and env["HF_HOME"] == "/data/hf-cache"
    # The API accepts what the client models serialise; read back strictly, nothing is lost.
    for body in to_api_dicts([service, job]):
        assert to_api_dicts([to_model(body)]) == [body]
    assert len(job.metadata.name) + len("-99") <= 63  # pod host names "<job>-<index>" fit a DNS label


def test_unknown_manifest_keys_are_rejected(tmp_path):
    spec, _, _ = rendered(tmp_path, machines=2, processes=1)
    manifest = job_manifest(spec, DeploySettings())
    manifest["spec"]["template"]["spec"]["containers"][0]["gpus"] = 2
    with pytest.raises(Exception, match="Unexpected keys in model class V1Container: {'gpus'}"):
        to_model(manifest)


def test_rendezvous_wiring_same_endpoint_pod_zero_hosts_it_world_is_machines_times_processes(tmp_path):
    machines, processes = 3, 4
    spec, service, job = rendered(tmp_path, machines, processes)
    pod = job.spec.template.spec
    # Every pod runs the one template: the same command, so the same endpoint and run id.
    config, program, args = launch_config(pod.containers[0].command)
    assert config.rdzv_backend == "c10d" and config.run_id == job.metadata.name
    assert config.min_nodes == config.max_nodes == machines and config.nproc_per_node == processes
    assert config.max_nodes * config.nproc_per_node == 12  # world size
    assert args[-3:] == ["pixart_pipeline.training", "/data/runs/r/run_spec.json", "--reuse-finished"]
    # The endpoint is pod 0's DNS name: "<hostname>.<subdomain>", hostname "<job>-<index>" for an
    # indexed Job, subdomain = the headless Service, which selects exactly the Job's pods.
    host, port = config.rdzv_endpoint.rsplit(":", 1)
    pod_names = [f"{job.metadata.name}-{i}.{pod.subdomain}" for i in range(machines)]
    assert host == pod_names[0] and len(set(pod_names)) == machines
    assert service.metadata.name == pod.subdomain and service.spec.cluster_ip == "None"
    assert service.spec.publish_not_ready_addresses  # names resolve before every pod is ready
    assert service.spec.selector.items() <= job.spec.template.metadata.labels.items()
    assert int(port) == service.spec.ports[0].port == pod.containers[0].ports[0].container_port


class LocalMachines:
    """Runs the rendered pods as local processes (this test's stand-in for the cluster): each pod's
    command and env, with ``JOB_COMPLETION_INDEX`` set as the Job controller sets it and the
    rendezvous host pointed at this machine. Everything else is real."""

    namespace = "local"

    def __init__(self, probe: Path) -> None:
        self.probe = probe
        self.outputs: list[str] = []

    def current_image(self) -> str:
        return "local"

    def run(self, context, service, job, machines: int) -> None:
        (container,) = job.spec.template.spec.containers
        self.image = container.image
        with socket.socket() as s:  # a free port for the c10d store
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable if c == "python" else c for c in container.command]
        command = [f"--rdzv_endpoint=127.0.0.1:{port}" if c.startswith("--rdzv_endpoint=") else c for c in command]
        command = command[: command.index("-m", 3)] + [str(self.probe)]  # the probe instead of the trainer
        env = {e.name: e.value for e in container.env}
        procs = [subprocess.Popen(command, env={**os.environ, **env, "JOB_COMPLETION_INDEX": str(i)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(machines)]
        self.outputs = [p.communicate(timeout=300)[0] for p in procs]
        failed = [i for i, p in enumerate(procs) if p.returncode]
        assert not failed, "\n".join(self.outputs)


class ProbeRun(PreparedRun):
    @property
    def trainer_args(self) -> list[str]:
        return ["-m", "pixart_pipeline.training"]  # replaced by LocalMachines


@pytest.mark.slow
def test_two_machines_rendezvous_for_real_and_rank_zero_alone_reports_through_pipes(tmp_path):
    """2 machines x 2 processes: c10d hands out 4 distinct ranks with world size 4, each machine's
    ranks share one group rank, and the materialization comes back from rank 0 alone."""
    cfg = load_config(copy_demo(tmp_path, config={"num_machines": 2, "num_processes": 2}))
    machines = LocalMachines(PROBE)
    prepared = ProbeRun(run_dir=tmp_path / "run", spec_path=tmp_path / "run" / "spec.json", command=[], env={})

    @dg.asset(name="trained_checkpoint")
    def probe(context):  # (no annotation: this module has postponed annotations)
        return run_multinode(context, cfg, prepared, DeploySettings(), machines).get_materialize_result()

    result = dg.materialize([probe], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert result.success, "\n".join(machines.outputs)
    (event,) = result.get_asset_materialization_events()
    ranks = event.materialization.metadata["ranks"].value
    assert sorted(r["RANK"] for r in ranks) == [0, 1, 2, 3]
    assert {r["WORLD_SIZE"] for r in ranks} == {4} and {r["LOCAL_WORLD_SIZE"] for r in ranks} == {2}
    by_machine = {}
    for r in ranks:
        by_machine.setdefault(r["machine"], set()).add((r["GROUP_RANK"], r["LOCAL_RANK"]))
    assert sorted(by_machine) == [0, 1]
    assert all(len({g for g, _ in v}) == 1 and {l for _, l in v} == {0, 1} for v in by_machine.values())
    assert [r["RANK"] for r in ranks if r["pipes"]] == [0]  # one Pipes connection in the whole world
    assert len({r["endpoint"] for r in ranks}) == 1
    assert (tmp_path / "run" / "pipes").is_dir()
    assert machines.image == "local"  # no image in the settings: the step's own image  # the message file lived on the shared volume
