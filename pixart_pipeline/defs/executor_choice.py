"""Which executor runs the steps, chosen by ``$PIXART_EXECUTOR`` (a deployment choice, never part
of config.json, so in no fingerprint).

- ``local`` (default): ``defs/executor.py``'s multiprocess executor, one process per step.
- ``k8s``: ``dagster_k8s.k8s_job_executor`` (extra ``[k8s]``), one pod per step, configured from the
  deployment settings (``defs/k8s/settings.py``). Imported only when chosen, so the default install
  never needs dagster-k8s.
"""

from __future__ import annotations

import os

import dagster as dg

from pixart_pipeline.config import ConfigError, PipelineConfig

EXECUTOR_ENV = "PIXART_EXECUTOR"
EXECUTORS = ("local", "k8s")


def executor_kind(environ: dict[str, str] | None = None) -> str:
    """``local`` or ``k8s``, from ``$PIXART_EXECUTOR``; anything else is an error that lists both."""
    kind = (os.environ if environ is None else environ).get(EXECUTOR_ENV, "local").strip().lower() or "local"
    if kind not in EXECUTORS:
        raise ConfigError(f"${EXECUTOR_ENV} is {kind!r}; use one of {', '.join(EXECUTORS)}")
    return kind


def check_executor_fits(cfg: PipelineConfig, kind: str) -> None:
    """Multi-node training needs the cluster: locally ``num_machines`` > 1 is refused up front."""
    machines = cfg.training.num_machines
    if machines > 1 and kind != "k8s":
        raise ConfigError(
            f"{cfg.config_path}: num_machines is {machines}, but the {kind!r} executor runs on this machine "
            f"only. Set num_machines to 1 (num_processes GPUs on this machine), or run on Kubernetes with "
            f"{EXECUTOR_ENV}=k8s (README: Running on Kubernetes)"
        )


def build_executor(kind: str, local: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """The executor definition of ``kind`` (``executor_kind()``); ``local`` is ``defs/executor.py``'s."""
    if kind == "local":
        return local
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError:
        raise ConfigError(f"{EXECUTOR_ENV}=k8s needs dagster-k8s: pip install 'pixart-pipeline[k8s]'") from None
    from pixart_pipeline.defs.k8s.settings import load_settings
    from pixart_pipeline.defs.k8s.steps import executor_config

    return k8s_job_executor.configured(executor_config(load_settings()))
