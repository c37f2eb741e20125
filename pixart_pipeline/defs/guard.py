"""An executor wrapper that records who runs a run and never lets a step wait on a dead run.

It wraps any Dagster executor (the multiprocess one here; the same wrapper fits the Kubernetes one)
and, around the wrapped executor's own work:
- records this process (host, pid) in the run's tags and marks the processes it starts
  (``defs/liveness.py``), so a later launch can tell whether this run is still alive;
- recovers dead runs before the first step claims a pool slot (``defs/recovery.py``);
- when a step reports "Step blocked by limit for pool X", recovers dead holders (the step then
  gets the slot within a second) or fails the run at once with a message naming the live run that
  holds the slot and the command that frees it, instead of waiting on it without end.
"""

from __future__ import annotations

from typing import Iterator

import dagster as dg

from pixart_pipeline.defs import liveness, recovery


class GuardedExecutor(dg.Executor):
    def __init__(self, inner: dg.Executor):
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        instance, run_id = plan_context.instance, plan_context.run_id
        instance.add_run_tags(run_id, recovery.owner_tags())
        recovery.recover(instance, plan_context.log.warning, skip=run_id)
        with liveness.marked(run_id):
            events = self._inner.execute(plan_context, execution_plan)
            try:
                for event in events:
                    yield event
                    pool = recovery.blocked_pool(event)
                    if pool is not None:
                        recovery.on_blocked(instance, run_id, pool, plan_context.log.warning)
            finally:
                events.close()  # the wrapped executor's cleanup (pending claims, child processes)


def guarded(executor_def: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """``executor_def`` with the same name, config and requirements, its executor wrapped."""

    def create(init_context) -> dg.Executor:
        return GuardedExecutor(executor_def.executor_creation_fn(init_context))

    return dg.ExecutorDefinition(
        name=executor_def.name,
        config_schema=executor_def.config_schema,
        requirements=executor_def.get_requirements,
        executor_creation_fn=create,
        description=executor_def.description,
    )
