"""Launch a multi-node training run from the ``trained_checkpoint`` step, through Dagster Pipes.

The equivalent of ``PipesK8sClient.run`` for an indexed Job (that client launches one pod): the
same Pipes pieces, wired for several machines.
- Context: ``PipesEnvContextInjector``, the same bootstrap variables in every pod; only global
  rank 0 opens Pipes (``training/report.py`` checks ``RANK``).
- Messages: ``PipesFileMessageReader`` on the shared volume, the same way
  ``PipesSubprocessClient`` reads the trainer locally (a file), so rank 0 may run on any pod and
  its log lines and the materialization come back to this step as they do on one machine.
- The Job and its Service are deleted when the step ends (success, failure or termination).

``KubernetesLauncher`` needs a cluster and is not run by the test suite; everything around it is:
``tests/deploy/test_multinode.py`` runs the rendered pods as local processes through
``run_multinode`` (a real c10d rendezvous, process group and Pipes session).
"""

from __future__ import annotations

import os

import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.k8s.multinode import job_name, multinode_spec, render
from pixart_pipeline.defs.k8s.settings import DeploySettings
from pixart_pipeline.training.stage import PreparedRun

LOG_TAIL_LINES = 200


def resolve_image(settings: DeploySettings, launcher) -> str:
    """The trainer pods' image: the settings', else the image this step's own pod runs."""
    image = settings.image or launcher.current_image()
    if not image:
        raise dg.Failure("multi-node training needs an image: set `image` in $PIXART_K8S_SETTINGS "
                         "(or $PIXART_K8S_IMAGE)", allow_retries=False)
    return image


class KubernetesLauncher:
    """Creates the Service and the indexed Job, waits for every machine, deletes both at the end."""

    def __init__(self, namespace: str | None) -> None:
        from dagster_k8s.client import DagsterKubernetesClient
        from dagster_k8s.utils import detect_current_namespace
        import kubernetes

        if os.getenv("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config()
        else:
            kubernetes.config.load_kube_config()
        self.api = DagsterKubernetesClient.production_client()
        self.namespace = namespace or detect_current_namespace(None) or "default"

    def current_image(self) -> str | None:
        """This step pod's image (Dagster's ``DAGSTER_CURRENT_IMAGE``, else read from its own pod)."""
        if image := os.environ.get("DAGSTER_CURRENT_IMAGE"):
            return image
        pod = os.environ.get("HOSTNAME")
        if not pod:
            return None
        return self.api.core_api.read_namespaced_pod(pod, self.namespace).spec.containers[0].image

    def run(self, context: dg.AssetExecutionContext, service, job, machines: int) -> None:
        api, name, namespace = self.api, job.metadata.name, self.namespace
        api.core_api.create_namespaced_service(namespace, service)
        try:
            api.create_namespaced_job_with_retries(body=job, namespace=namespace)
            try:
                api.wait_for_job_success(name, namespace, instance=context.instance, run_id=context.run.run_id,
                                         wait_timeout=0, num_pods_to_wait_for=machines)
            except Exception:
                self._log_pod_tails(context, name)
                raise
        finally:
            api.delete_job(name, namespace)
            api.core_api.delete_namespaced_service(name, namespace)

    def _log_pod_tails(self, context: dg.AssetExecutionContext, name: str) -> None:
        """The last lines of every machine's output, so a failed rank's error shows in Dagster."""
        for pod in self.api.get_pod_names_in_job(name, self.namespace):
            try:
                tail = self.api.retrieve_pod_logs(pod, self.namespace, tail_lines=LOG_TAIL_LINES)
            except Exception as e:  # a pod that never started has no log; say so and go on
                tail = f"(no log: {e})"
            context.log.error(f"--- {pod} (last {LOG_TAIL_LINES} lines) ---\n{tail}")


def run_multinode(context: dg.AssetExecutionContext, cfg: PipelineConfig, prepared: PreparedRun,
                  settings: DeploySettings, launcher=None) -> dg.PipesClientCompletedInvocation:
    """Render the trainer's Service + indexed Job with this step's Pipes variables, have ``launcher``
    (the cluster; a test passes one that runs the pods as local processes) run them to the end, and
    return the Pipes results (what rank 0 reported)."""
    launcher = launcher or KubernetesLauncher(settings.namespace)
    name = job_name(context.run.run_id, prepared.run_dir.name)
    messages = prepared.run_dir / "pipes" / f"{context.run.run_id}.jsonl"
    messages.parent.mkdir(parents=True, exist_ok=True)
    with dg.open_pipes_session(context=context, context_injector=dg.PipesEnvContextInjector(),
                               message_reader=dg.PipesFileMessageReader(str(messages))) as session:
        spec = multinode_spec(cfg, settings, name=name, namespace=launcher.namespace, image=resolve_image(settings, launcher),
                              trainer_args=prepared.trainer_args, env=dict(session.get_bootstrap_env_vars()))
        service, job = render(spec, settings)
        context.log.info(f"Training on {spec.machines} machine(s) x {spec.processes} process(es): "
                         f"indexed Job {launcher.namespace}/{name}, rendezvous {spec.rendezvous_host}")
        launcher.run(context, service, job, spec.machines)
    return dg.PipesClientCompletedInvocation(session)
