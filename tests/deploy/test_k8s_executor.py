"""PIXART_EXECUTOR: the default stays local (no dagster-k8s), k8s selects Dagster's Kubernetes
executor configured from the deployment settings, and neither changes a fingerprint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._config import validate_config

from pixart_pipeline.config import ConfigError, load_config
from pixart_pipeline.defs.build import build_definitions
from pixart_pipeline.defs.k8s.settings import load_settings
from pixart_pipeline.defs.k8s.steps import K8S_CONFIG_TAG, executor_config
from demo_copy import copy_demo

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "demo" / "config.json"
SETTINGS = REPO / "deploy" / "k8s" / "settings.yaml"


@pytest.fixture
def k8s_env(monkeypatch):
    monkeypatch.setenv("PIXART_EXECUTOR", "k8s")
    monkeypatch.setenv("PIXART_K8S_SETTINGS", str(SETTINGS))


def code_versions(defs: dg.Definitions) -> dict[str, str]:
    graph = defs.resolve_asset_graph()
    return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}


def test_default_executor_is_local_and_steps_carry_no_k8s_tags(monkeypatch):
    monkeypatch.delenv("PIXART_EXECUTOR", raising=False)
    defs = build_definitions(load_config(DEMO))
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "multiprocess"
    assert all(K8S_CONFIG_TAG not in node.tags for node in job.nodes)


def test_the_default_code_location_never_imports_dagster_k8s():
    """The local path must work on an install without the [k8s] extra."""
    code = ("import sys, pixart_pipeline.definitions as d; "
            "assert d.defs.resolve_implicit_global_asset_job_def().executor_def.name == 'multiprocess'; "
            "print(sorted(m for m in sys.modules if m.startswith(('dagster_k8s', 'kubernetes'))))")
    env = {"PATH": "/usr/bin:/bin", "PIXART_CONFIG": str(DEMO), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_k8s_selects_dagster_k8s_job_executor_configured_from_the_settings(k8s_env):
    from dagster_k8s import k8s_job_executor

    defs = build_definitions(load_config(DEMO))
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == k8s_job_executor.name == "k8s"
    # The configured values satisfy dagster-k8s's own executor schema (key names included).
    config = executor_config(load_settings())
    result = validate_config(k8s_job_executor.config_schema.config_type, config)
    assert result.success, result.errors
    assert config["job_namespace"] == "pixart" and config["service_account_name"] == "dagster"
    assert config["volumes"] == [{"name": "pixart-data", "persistent_volume_claim": {"claim_name": "pixart-data"}}]
    assert config["volume_mounts"] == [{"name": "pixart-data", "mount_path": "/data"}]
    assert "PIXART_EXECUTOR=k8s" in config["env_vars"]  # step pods rebuild the same definitions
    assert f"PIXART_K8S_SETTINGS={SETTINGS}" in config["env_vars"]
    assert "PIXART_CONFIG=/data/config/config.json" in config["env_vars"]
    assert config["env_secrets"] == ["pixart-secrets"]


def test_deployment_settings_change_no_code_version(monkeypatch, k8s_env):
    cfg = load_config(DEMO)
    on_k8s = code_versions(build_definitions(cfg))
    monkeypatch.setenv("PIXART_K8S_IMAGE", "registry.example/pixart:other")
    monkeypatch.setenv("PIXART_K8S_CLAIM_NAME", "other-volume")
    moved = code_versions(build_definitions(cfg))
    monkeypatch.delenv("PIXART_EXECUTOR")
    local = code_versions(build_definitions(cfg))
    assert on_k8s == moved == local


def test_num_machines_above_one_is_refused_locally_and_changes_only_the_trainer(tmp_path, monkeypatch):
    monkeypatch.delenv("PIXART_EXECUTOR", raising=False)
    one = load_config(copy_demo(tmp_path / "one"))
    two = load_config(copy_demo(tmp_path / "two", config={"num_machines": 2}))
    with pytest.raises(ConfigError, match=r"num_machines is 2.*PIXART_EXECUTOR=k8s") as err:
        build_definitions(two)
    assert str(two.config_path) in str(err.value)
    from pixart_pipeline.stages import fields_by_key

    a, b = fields_by_key(one), fields_by_key(two)
    changed = {k for k in a if a[k] != b[k] and k[0] != "raw_dataset"}  # raw_dataset names its folder
    assert changed == {("trained_checkpoint",)}
    assert b[("trained_checkpoint",)]["num_machines"] == 2 and "num_machines" not in a[("trained_checkpoint",)]


def test_unknown_executor_and_bad_settings_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXART_EXECUTOR", "kubernetes")
    with pytest.raises(ConfigError, match=r"PIXART_EXECUTOR is 'kubernetes'; use one of local, k8s"):
        build_definitions(load_config(DEMO))
    bad = tmp_path / "settings.yaml"
    bad.write_text("claim_nmae: x\ngpu:\n  cpu: 8\n")
    with pytest.raises(ConfigError) as err:
        load_settings({"PIXART_K8S_SETTINGS": str(bad)})
    message = str(err.value)
    assert str(bad) in message and "claim_nmae" in message and "did you mean 'claim_name'" in message
    assert "gpu.cpu" in message  # a number where a Kubernetes quantity string is expected
    with pytest.raises(ConfigError, match="not a file"):
        load_settings({"PIXART_K8S_SETTINGS": str(tmp_path / "missing.yaml")})
