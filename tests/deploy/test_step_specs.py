"""Every step's Kubernetes Job as dagster-k8s renders it (``get_user_defined_k8s_config`` on the
step's tags, ``construct_dagster_k8s_job``): GPUs on exactly the GPU stages, the shared volume on
every pod, deployment settings flowing through."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from pixart_pipeline.config import load_config
from pixart_pipeline.defs.build import build_definitions
from pixart_pipeline.defs.k8s.render import main as render_main, render_step_jobs
from pixart_pipeline.defs.k8s.settings import load_settings
from demo_copy import copy_demo

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "deploy" / "k8s" / "settings.yaml"
GPU_STEPS = {"vae_cache__shapes", "text_embed_cache", "trained_checkpoint", "evaluation_report"}
DATA_STEPS = {"raw_dataset__shapes", "captions__shapes", "bucketed_metadata__shapes"}
CHECK_STEPS = {"bucketed_metadata__shapes_enough_images_for_a_batch", "bucketed_metadata__shapes_buckets_fill_a_batch",
               "trained_checkpoint_loss_is_finite", "evaluation_report_trained_beats_base"}


@pytest.fixture(autouse=True)
def k8s_env(monkeypatch):
    monkeypatch.setenv("PIXART_EXECUTOR", "k8s")
    monkeypatch.setenv("PIXART_K8S_SETTINGS", str(SETTINGS))
    monkeypatch.setenv("PIXART_K8S_IMAGE", "registry.example/pixart:1.0")


def rendered(tmp_path: Path, **config) -> dict[str, k8s.V1Job]:
    cfg = load_config(copy_demo(tmp_path, config=config or None))
    return render_step_jobs(build_definitions(cfg), load_settings())


def container(job: k8s.V1Job) -> k8s.V1Container:
    containers = job.spec.template.spec.containers
    assert len(containers) == 1
    return containers[0]


def gpus(job: k8s.V1Job) -> int:
    limits = container(job).resources.limits or {}
    return int(limits.get("nvidia.com/gpu", 0))


def test_one_process_gpu_stages_get_one_gpu_data_stages_none(tmp_path):
    jobs = rendered(tmp_path)
    assert set(jobs) == GPU_STEPS | DATA_STEPS | CHECK_STEPS
    assert {step: gpus(job) for step, job in jobs.items()} == {
        **{s: 1 for s in GPU_STEPS}, **{s: 0 for s in DATA_STEPS | CHECK_STEPS}}
    for step, job in jobs.items():
        resources = container(job).resources
        # extended resources: request == limit; memory limited so an OOM kills the step, not the node
        assert resources.requests.get("nvidia.com/gpu") == resources.limits.get("nvidia.com/gpu")
        assert resources.limits["memory"] == resources.requests["memory"]
        pod = job.spec.template.spec
        if step in GPU_STEPS:
            assert resources.requests["cpu"] == "8" and resources.requests["memory"] == "64Gi"
            assert pod.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
            assert [t.key for t in pod.tolerations] == ["nvidia.com/gpu"]
            assert any(v.name == "dshm" and v.empty_dir.medium == "Memory" for v in pod.volumes)
        else:
            assert resources.requests == {"cpu": "2", "memory": "8Gi"}
            assert pod.node_selector is None and pod.tolerations is None
            assert all(v.name != "dshm" for v in pod.volumes)


def test_num_processes_sizes_the_encoders_and_the_trainer_evaluation_keeps_one(tmp_path):
    jobs = rendered(tmp_path, num_processes=2)
    assert {s: gpus(jobs[s]) for s in GPU_STEPS} == {
        "vae_cache__shapes": 2, "text_embed_cache": 2, "trained_checkpoint": 2, "evaluation_report": 1}
    trainer = container(jobs["trained_checkpoint"]).resources.requests
    assert trainer["cpu"] == "16" and trainer["memory"] == "128Gi"  # per-GPU settings x 2


def test_multi_node_trainer_step_only_launches_its_job_so_asks_for_no_gpu(tmp_path):
    jobs = rendered(tmp_path, num_processes=2, num_machines=3)
    assert gpus(jobs["trained_checkpoint"]) == 0
    assert gpus(jobs["vae_cache__shapes"]) == 2  # the encoders still run on one machine


def test_every_pod_shares_the_volume_settings_and_image(tmp_path):
    for step, job in rendered(tmp_path).items():
        pod, c = job.spec.template.spec, container(job)
        assert c.image == "registry.example/pixart:1.0" and c.image_pull_policy == "IfNotPresent"
        assert pod.service_account_name == "dagster"
        claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim}
        assert claims == {"pixart-data": "pixart-data"}
        assert {m.name: m.mount_path for m in c.volume_mounts}["pixart-data"] == "/data"
        env = {e.name: e.value for e in c.env}
        assert env["PIXART_EXECUTOR"] == "k8s" and env["PIXART_CONFIG"] == "/data/config/config.json"
        assert env["HF_HOME"] == "/data/hf-cache" and env["PIXART_K8S_IMAGE"] == "registry.example/pixart:1.0"
        assert [s.secret_ref.name for s in c.env_from if s.secret_ref] == ["pixart-secrets"]
        labels = job.spec.template.metadata.labels
        assert labels["dagster/op"] == step
        if step not in CHECK_STEPS:  # checks carry no tag of their own: the executor's defaults
            assert labels["pixart/stage"] == step.split("__")[0]
        assert job.spec.backoff_limit == 0  # Dagster retries a step, the Job controller does not


def test_rendered_jobs_are_valid_api_objects(tmp_path):
    """camelCase, as the API server takes them, parsed back strictly against the client models."""
    api = ApiClient()
    for job in rendered(tmp_path).values():
        body = api.sanitize_for_serialization(job)
        assert body["apiVersion"] == "batch/v1" and body["kind"] == "Job"
        again = k8s_model_from_dict(k8s.V1Job, k8s_snake_case_dict(k8s.V1Job, body))
        assert api.sanitize_for_serialization(again) == body


def test_render_command_prints_every_step_and_the_multinode_manifests(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.setenv("PIXART_CONFIG", str(copy_demo(tmp_path, config={"num_machines": 2})))
    assert render_main(["--multinode"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Job"] * 11 + ["Service", "Job"]  # 7 assets + 4 checks, then the trainer
    assert docs[-1]["spec"]["completionMode"] == "Indexed"


def test_per_gpu_quantities_scale_with_the_gpu_count():
    from pixart_pipeline.defs.k8s.steps import scale_quantity

    assert [scale_quantity(q, 3) for q in ("8", "500m", "64Gi", "1.5")] == ["24", "1500m", "192Gi", "4.5"]
    with pytest.raises(ValueError, match="'lots' is not a Kubernetes quantity"):
        scale_quantity("lots", 2)
