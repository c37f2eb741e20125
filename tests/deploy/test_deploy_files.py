"""deploy/k8s: the Dockerfile parses and builds what the issue asks for; the Helm values use only
keys that Dagster's chart documents, and agree with the deployment settings and the package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from kubernetes import client as k8s

from pixart_pipeline.defs.k8s.settings import load_settings

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "k8s"

# Keys of Dagster's Helm chart (dagster-io/dagster, helm/dagster/schema/schema/charts/...: the
# pydantic models the chart's values.schema.json is generated from; runMonitoring's keys from
# templates/configmap-instance.yaml). Only the parts our values touch.
CHART_KEYS = {
    "": {"dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
         "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
         "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
         "telemetry", "serviceAccount", "global", "retention", "additionalInstanceConfig", "concurrency"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "dagster-user-deployments.deployments[]": {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "port", "env",
        "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe",
        "labels", "volumeMounts", "volumes", "schedulerName"},
    "dagster-user-deployments.deployments[].image": {"repository", "tag", "pullPolicy"},
    "dagster-user-deployments.deployments[].includeConfigInLaunchedRuns": {"enabled"},
    "runLauncher": {"type", "config"},
    "runLauncher.config": {"celeryK8sRunLauncher", "k8sRunLauncher", "customRunLauncher"},
    "runLauncher.config.k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig"},
    "postgresql": {"image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
                   "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service"},
    "postgresql.service": {"port"},
    "concurrency": {"enabled", "pools", "runs"},
    "concurrency.pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    "dagsterDaemon": {
        "enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
        "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
        "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe", "annotations",
        "runMonitoring", "runRetries", "sensors", "schedules", "schedulerName", "volumeMounts", "volumes"},
    "dagsterDaemon.runMonitoring": {"enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts",
                                    "pollIntervalSeconds", "freeSlotsAfterRunEndSeconds"},
    "serviceAccount": {"create", "name", "annotations"},
    "telemetry": {"enabled"},
}
# Values that are Kubernetes objects (camelCase, as the chart passes them through): checked against
# the client's models instead of a key list.
K8S_OBJECTS = {"volumes": k8s.V1Volume, "volumeMounts": k8s.V1VolumeMount, "resources": k8s.V1ResourceRequirements}
FREE_FORM = {"env", "envSecrets"}  # a name -> value map, a list of {name}


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def walk(node, path: str = "") -> list[str]:
    """Every key path of ``node`` the chart does not document (Kubernetes objects checked by model)."""
    unknown = []
    for key, value in node.items():
        if path in CHART_KEYS and key not in CHART_KEYS[path]:
            unknown.append(f"{path}.{key}".lstrip("."))
            continue
        child = f"{path}.{key}".lstrip(".")
        if key in K8S_OBJECTS:
            model = K8S_OBJECTS[key]
            for item in value if isinstance(value, list) else [value]:
                k8s_model_from_dict(model, k8s_snake_case_dict(model, item))  # raises on an unknown key
        elif key in FREE_FORM:
            continue
        elif isinstance(value, dict):
            unknown += walk(value, child)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                unknown += walk(item, f"{child}[]")
    return unknown


def test_helm_values_use_only_keys_the_chart_documents(values):
    assert walk(values) == []
    # and the check does catch a misspelt key, a Kubernetes object's included
    assert walk({"runLauncher": {"tpye": "K8sRunLauncher"}}) == ["runLauncher.tpye"]
    with pytest.raises(Exception, match="claimNmae|claim_nmae"):
        walk({"dagster-user-deployments": {"deployments": [{"volumes": [
            {"name": "d", "persistentVolumeClaim": {"claimNmae": "x"}}]}]}})


def test_helm_values_run_our_code_location_with_the_k8s_executor_and_the_settings_volume(values):
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    module = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", module]
    env = deployment["env"]
    assert env["PIXART_EXECUTOR"] == "k8s"
    settings = load_settings({"PIXART_K8S_SETTINGS": str(DEPLOY / "settings.yaml")})
    # The code location mounts the claim that the step pods mount, at the same path.
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]
              if "persistentVolumeClaim" in v}
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    assert claims == {"pixart-data": settings.claim_name} and mounts["pixart-data"] == settings.mount_path
    assert env["PIXART_CONFIG"].startswith(settings.mount_path + "/")
    assert env["PIXART_CONFIG"] == settings.env["PIXART_CONFIG"]
    settings_dir = Path(env["PIXART_K8S_SETTINGS"]).parent.as_posix()
    assert mounts["pixart-settings"] == settings_dir
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespace"] == settings.namespace
    assert values["serviceAccount"]["name"] == settings.service_account_name
    assert "nvidia.com/gpu" not in json.dumps(deployment["resources"])  # the code server needs no GPU


def test_helm_instance_settings_match_the_postgres_dagster_yaml(values):
    """The chart writes the instance config from values: the same pool limit and run monitoring as
    the dagster.yaml used without the chart (deploy/postgres/dagster.yaml)."""
    candidates = [REPO / "deploy" / "postgres" / "dagster.yaml", REPO / "dagster.yaml"]
    instance = yaml.safe_load(next(p for p in candidates if p.exists()).read_text())
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] == instance["run_monitoring"]["enabled"]
    assert monitoring["freeSlotsAfterRunEndSeconds"] == instance["run_monitoring"]["free_slots_after_run_end_seconds"]


def test_rbac_manifests_are_valid_and_bind_the_settings_service_account():
    role, binding = yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text())
    role = k8s_model_from_dict(k8s.V1Role, k8s_snake_case_dict(k8s.V1Role, role))
    binding = k8s_model_from_dict(k8s.V1RoleBinding, k8s_snake_case_dict(k8s.V1RoleBinding, binding))
    assert role.rules[0].resources == ["services"] and {"create", "delete"} <= set(role.rules[0].verbs)
    settings = load_settings({"PIXART_K8S_SETTINGS": str(DEPLOY / "settings.yaml")})
    assert binding.subjects[0].name == settings.service_account_name and binding.role_ref.name == role.metadata.name


DOCKERFILE_INSTRUCTIONS = {"FROM", "ARG", "ENV", "WORKDIR", "RUN", "COPY", "ADD", "USER", "EXPOSE", "CMD",
                           "ENTRYPOINT", "LABEL", "HEALTHCHECK", "SHELL", "VOLUME", "STOPSIGNAL", "ONBUILD"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and ``\\`` continuations joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in logical]


def test_dockerfile_parses_and_installs_the_cuda_torch_pin_and_the_deploy_extras():
    steps = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    assert {name for name, _ in steps} <= DOCKERFILE_INSTRUCTIONS
    names = [name for name, _ in steps]
    assert names[: names.index("FROM")] == ["ARG"] * names.index("FROM")  # only ARGs before FROM
    args = dict(re.match(r"(\w+)=?(.*)", a).groups() for n, a in steps if n == "ARG")
    makefile = (REPO / "Makefile").read_text()
    assert f"torch=={args['TORCH_VERSION']}" in makefile  # the project's one torch pin
    runs = [a for n, a in steps if n == "RUN"]
    assert any("torch.version.cuda" in r and "pip install \"torch==${TORCH_VERSION}\"" in r for r in runs)
    install = next(r for r in runs if "pip install \".[" in r)
    extras = set(re.search(r"\.\[([\w,]+)\]", install).group(1).split(","))
    assert extras == {"k8s", "postgres", "wandb"}
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared)
    for name, arg in steps:
        if name == "COPY":
            *sources, _ = arg.split()
            assert all((REPO / s).exists() for s in sources), arg  # build context = repository root
    cmd = json.loads(next(a for n, a in steps if n == "CMD"))  # exec form: a JSON list
    assert cmd[:3] == ["dagster", "code-server", "start"] and "pixart_pipeline.definitions" in cmd
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and "output" in ignored
