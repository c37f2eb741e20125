"""Render, without a cluster, the Kubernetes Jobs that ``k8s_job_executor`` would create.

Uses dagster-k8s's own functions the way its step handler does (``DagsterK8sJobConfig`` from the
executor config, ``get_user_defined_k8s_config`` from the step's tags, ``construct_dagster_k8s_job``),
so what is printed is what a run submits, minus the run id and the step's command arguments.

    PIXART_EXECUTOR=k8s PIXART_K8S_SETTINGS=deploy/k8s/settings.yaml \\
        python -m pixart_pipeline.defs.k8s.render | kubectl apply --dry-run=server -f -
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import dagster as dg
import yaml
from kubernetes.client import ApiClient

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.k8s.multinode import MultiNodeSpec, job_name, render
from pixart_pipeline.defs.k8s.settings import DeploySettings
from pixart_pipeline.defs.k8s.steps import executor_config

EXAMPLE_RUN_ID = "00000000-0000-0000-0000-000000000000"
PLACEHOLDER_IMAGE = "<the code location's image>"  # what Dagster fills in when `image` is unset
JOB_CONFIG_KEYS = ("job_image", "image_pull_policy", "image_pull_secrets", "service_account_name",
                   "env_config_maps", "env_secrets", "env_vars", "volume_mounts", "volumes", "labels", "resources")


def step_job_config(settings: DeploySettings):
    """The ``DagsterK8sJobConfig`` every step pod starts from (the executor's config)."""
    from dagster_k8s import DagsterK8sJobConfig

    config = executor_config(settings)
    fields = {k: config[k] for k in JOB_CONFIG_KEYS if k in config}
    return DagsterK8sJobConfig(**{"job_image": PLACEHOLDER_IMAGE, **fields})


def render_step_jobs(defs: dg.Definitions, settings: DeploySettings) -> dict[str, Any]:
    """``{step key: V1Job}`` for every asset step of the code location's asset job."""
    from dagster_k8s import construct_dagster_k8s_job
    from dagster_k8s.job import get_k8s_job_name, get_user_defined_k8s_config

    job_config = step_job_config(settings)
    jobs = {}
    for node in defs.resolve_implicit_global_asset_job_def().nodes:
        step_key = node.name  # one op per asset: its step key is the op's name
        user_defined = get_user_defined_k8s_config(dict(node.tags))
        name = f"dagster-step-{get_k8s_job_name(EXAMPLE_RUN_ID, step_key)}"  # as the step handler names it
        jobs[step_key] = construct_dagster_k8s_job(
            job_config=job_config,
            args=["dagster", "api", "execute_step"],  # the step handler fills in the real arguments
            job_name=name,
            pod_name=name,
            user_defined_k8s_config=user_defined,
            component="step_worker",
            labels={"dagster/op": step_key},
        )
    return jobs


def render_multinode_example(cfg: PipelineConfig, settings: DeploySettings) -> list[Any]:
    """The trainer's Service + indexed Job for ``num_machines`` > 1, with a placeholder run id and
    Pipes variables (a real step fills them in)."""
    name = job_name("00000000", "run")
    spec = MultiNodeSpec(
        name=name, namespace=settings.namespace or "default", image=settings.image or PLACEHOLDER_IMAGE,
        machines=cfg.training.num_machines, processes=cfg.training.num_processes,
        trainer_args=["-m", "pixart_pipeline.training", f"{cfg.output_dir}/runs/<run>/run_spec.json",
                      "--reuse-finished"],
        env={**settings.env, "PYTHONUNBUFFERED": "1", "DAGSTER_PIPES_CONTEXT": "<set by the step>",
             "DAGSTER_PIPES_MESSAGES": "<set by the step>"},
    )
    return render(spec, settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multinode", action="store_true", help="also the trainer's Service + indexed Job")
    args = parser.parse_args(argv)
    from pixart_pipeline.config import load_config
    from pixart_pipeline.defs.build import build_definitions
    from pixart_pipeline.defs.k8s.settings import load_settings

    cfg, settings = load_config(), load_settings()
    models = list(render_step_jobs(build_definitions(cfg), settings).values())
    if args.multinode:
        models += render_multinode_example(cfg, settings)
    api = ApiClient()
    yaml.safe_dump_all([api.sanitize_for_serialization(m) for m in models], sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
