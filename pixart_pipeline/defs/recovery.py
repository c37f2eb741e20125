"""No crash wedges a pool: dead runs give their slots back, live ones are named, not waited on forever.

Dagster keeps a pool slot claimed by a run until the run's own process frees it; a run killed with
SIGKILL, by the OOM killer or a reboot never does, and no daemon watches runs started from the CLI.
So every launch (``sync``, ``dagster asset materialize``, a UI run's worker) first calls
``recover``: each in-progress run, and each run holding or waiting for a slot, is judged from the
host/pid its launcher recorded as run tags (``defs/liveness.py``). A run whose processes are
provably gone is marked failed and its slots freed, with a log line naming it. A run that is alive,
or cannot be judged (another host, no record), keeps its slot, and the launch that needs that slot
fails at once with ``PoolBusy`` naming the run and the command that frees it
(``pixart-pipeline runs fail RUN_ID``).
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone
from typing import Callable

import dagster as dg

from pixart_pipeline.defs import liveness

TAG_PREFIX = "pixart/"
# Run states in which a run's processes should exist.
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# A slot claimed for a run id that has no run record is the launcher's (sync claims before the run
# record exists, milliseconds apart); older than this, its launcher died in between.
ORPHAN_CLAIM_SECONDS = 60.0

Echo = Callable[[str], None]


class PoolBusy(RuntimeError):
    """A pool's slots are held by runs that are alive or cannot be judged."""


def owner_tags() -> dict[str, str]:
    """Run tags recording this process as the run's owner (host, boot id, pid, start time)."""
    return {TAG_PREFIX + k: v for k, v in liveness.owner_record().items()}


def _record(run: dg.DagsterRun | None) -> dict[str, str]:
    tags = run.tags if run is not None else {}
    return {k[len(TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def describe(run: dg.DagsterRun | None, run_id: str) -> str:
    """"run <id> (<command>, <status>)" for messages."""
    if run is None:
        return f"run {run_id} (no run record)"
    what = _record(run).get(liveness.LAUNCHED_BY) or run.job_name
    return f"run {run_id} ({what}, {run.status.value})"


def judge_run(run: dg.DagsterRun | None, run_id: str) -> liveness.Verdict:
    return liveness.judge(_record(run), run_id)


def pool_holders(instance: dg.DagsterInstance) -> dict[str, dict[str, list[str]]]:
    """{run_id: {"claimed": [pools], "pending": [pools]}} over every pool of the instance."""
    storage = instance.event_log_storage
    holders: dict[str, dict[str, list[str]]] = {}
    if not storage.supports_global_concurrency_limits:
        return holders
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        for slot in info.claimed_slots:
            holders.setdefault(slot.run_id, {"claimed": [], "pending": []})["claimed"].append(pool)
        for step in info.pending_steps:
            if step.assigned_timestamp is None:
                holders.setdefault(step.run_id, {"claimed": [], "pending": []})["pending"].append(pool)
    return holders


def _orphan_claim_age(instance: dg.DagsterInstance, run_id: str) -> float:
    """Seconds since a run-less claim was queued (0 when unknown: never judged stale by age)."""
    storage = instance.event_log_storage
    stamps = [
        step.enqueued_timestamp
        for pool in storage.get_concurrency_keys()
        for step in storage.get_concurrency_info(pool).pending_steps
        if step.run_id == run_id and step.enqueued_timestamp is not None
    ]
    if not stamps:
        return 0.0
    oldest = min(s if s.tzinfo else s.replace(tzinfo=timezone.utc) for s in stamps)
    return (datetime.now(timezone.utc) - oldest).total_seconds()


def fail_and_free(instance: dg.DagsterInstance, run_id: str, why: str) -> None:
    """Mark the run failed (when it is still in progress) and free every slot it claimed or awaits."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status in IN_PROGRESS + [dg.DagsterRunStatus.NOT_STARTED]:
        instance.report_run_failed(run, message=why)
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def recover(instance: dg.DagsterInstance, echo: Echo = print, skip: str | None = None) -> list[str]:
    """Fail and free every run whose processes are provably gone; returns their run ids.

    Looks at runs in progress and at runs holding or awaiting a pool slot (a finished run can still
    hold one when its process died after the run was marked failed). ``skip``: the caller's own run.
    """
    holders = pool_holders(instance)
    runs = {r.run_id: r for r in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS))}
    recovered = []
    for run_id in sorted(set(runs) | set(holders)):
        if run_id == skip:
            continue
        run = runs.get(run_id) or instance.get_run_by_id(run_id)
        pools = sorted(set(sum(holders.get(run_id, {}).values(), [])))
        if run is None:
            if _orphan_claim_age(instance, run_id) < ORPHAN_CLAIM_SECONDS:
                continue
            why = f"its launcher died before creating the run (claim older than {ORPHAN_CLAIM_SECONDS:.0f}s)"
        else:
            verdict = judge_run(run, run_id)
            finished = run.status not in IN_PROGRESS
            if verdict.alive or (verdict.alive is None and not finished):
                continue
            why = verdict.detail if not finished else f"the run already ended ({run.status.value})"
        fail_and_free(instance, run_id, f"Marked failed by pixart-pipeline: {why}.")
        freed = f", freed its {'/'.join(pools)} slot(s)" if pools else ""
        echo(f"recovered {describe(run, run_id)}: {why}; marked failed{freed}")
        recovered.append(run_id)
    return recovered


def busy_message(instance: dg.DagsterInstance, pool: str, run_id: str) -> str:
    """Why ``run_id`` cannot have a ``pool`` slot: each other run holding one, and how to free it."""
    holders = _holders(instance.event_log_storage.get_concurrency_info(pool), run_id)
    lines = [f"the `{pool}` pool has no free slot:"]
    for holder in holders:
        run = instance.get_run_by_id(holder)
        if run is None:  # claimed by a launcher that is creating the run (sync claims first)
            lines.append(f"  run {holder} holds it: another command is starting it right now (if that "
                         f"command died, the claim is freed {ORPHAN_CLAIM_SECONDS:.0f}s after it was made)")
        else:
            lines.append(f"  {describe(run, holder)} holds it: {judge_run(run, holder).detail}")
    first = holders[0] if holders else "RUN_ID"
    lines.append(f"Wait for it to finish; if it is stuck, free the slot with: pixart-pipeline runs fail {first}")
    return "\n".join(lines)


def pool_limit(instance: dg.DagsterInstance, pool: str) -> int | None:
    """The pool's slot count, creating its slots at the instance default the first time (as Dagster does)."""
    storage = instance.event_log_storage
    default = storage.get_pool_config().default_pool_limit
    limits = {p.name: p for p in storage.get_pool_limits()}
    info = limits.get(pool)
    if (info is None and default is not None) or (info is not None and info.from_default and info.limit != default):
        storage.initialize_concurrency_limit_to_default(pool)
        info = {p.name: p for p in storage.get_pool_limits()}.get(pool)
    return None if info is None else info.limit


def claim_slots(instance: dg.DagsterInstance, run_id: str, step_key: str, pools: list[str], echo: Echo = print) -> None:
    """Claim, for a run about to start, a slot in each of ``pools`` for ``step_key``, or raise PoolBusy.

    The claim is Dagster's own (the run's executor finds it already claimed and goes on), so two
    launchers racing for the last slot cannot both get it. Dead holders are recovered first.
    """
    storage = instance.event_log_storage
    recover(instance, echo, skip=run_id)
    for pool in pools:
        if not storage.supports_global_concurrency_limits or pool_limit(instance, pool) is None:
            continue
        if not storage.claim_concurrency_slot(pool, run_id, step_key).is_claimed:
            message = busy_message(instance, pool, run_id)
            storage.free_concurrency_slots_for_run(run_id)  # our pending entry and any slot taken above
            raise PoolBusy(message)


def blocked_pool(event: dg.DagsterEvent) -> str | None:
    """The pool a "Step blocked by limit for pool X" engine event names, else None."""
    if event.event_type != dg.DagsterEventType.ENGINE_EVENT or not event.step_key:
        return None
    data = event.engine_event_data
    entry = data.metadata.get("pool") if data is not None and data.metadata else None
    return None if entry is None else str(entry.value)


def on_blocked(instance: dg.DagsterInstance, run_id: str, pool: str, echo: Echo) -> None:
    """A step of ``run_id`` waits for ``pool``: recover dead holders; raise PoolBusy if others hold it.

    Dagster's executors poll for a slot in a loop that does not sleep (a core at 100%) and report a
    blocked step only every 5 minutes, so this returns only when the step gets the slot within a
    second, or when it waits for a step of its own run (whose process the executor is watching).
    """
    recover(instance, echo, skip=run_id)
    info = instance.event_log_storage.get_concurrency_info(pool)
    if any(s.run_id == run_id and s.assigned_timestamp is not None for s in info.pending_steps):
        # A freed slot went to this step: the executor's next claim, about a second after the
        # first, takes it. Sleeping meanwhile keeps that wait idle.
        time.sleep(1.2)
        return
    if not _holders(info, run_id):  # only this run's own steps hold the pool
        return
    raise PoolBusy(busy_message(instance, pool, run_id))


def _holders(info, run_id: str) -> list[str]:
    """Other runs holding a slot of the pool, or first in line for one (assigned, not yet claimed)."""
    ahead = [s.run_id for s in info.claimed_slots]
    ahead += [s.run_id for s in info.pending_steps if s.assigned_timestamp is not None]
    return [r for r in dict.fromkeys(ahead) if r != run_id]


def stop_processes(run: dg.DagsterRun, run_id: str, grace: float = 10.0) -> list[int]:
    """SIGTERM (then SIGKILL after ``grace`` s) every process of a run on this host; the pids signalled."""
    record = _record(run)
    pids = liveness.marked_processes(run_id)
    owner = int(record[liveness.PID]) if record.get(liveness.PID, "").isdigit() else None
    if owner is not None and liveness.process_start(owner) == record.get(liveness.PID_START):
        pids = sorted({owner, *pids})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(liveness.process_start(p) for p in pids):
            time.sleep(0.2)
    return pids
