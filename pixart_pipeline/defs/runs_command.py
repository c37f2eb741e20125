"""`pixart-pipeline runs`: see which runs hold the pools, recover dead ones, fail a stuck one."""

from __future__ import annotations

import sys

import dagster as dg

from pixart_pipeline.defs import recovery


def show(instance: dg.DagsterInstance) -> int:
    """Each run in progress or holding/awaiting a pool slot, with what its process is doing."""
    holders = recovery.pool_holders(instance)
    runs = {r.run_id: r for r in instance.get_runs(filters=dg.RunsFilter(statuses=recovery.IN_PROGRESS))}
    if not runs and not holders:
        print("No run is in progress or holds a pool slot.")
        return 0
    for run_id in sorted(set(runs) | set(holders)):
        run = runs.get(run_id) or instance.get_run_by_id(run_id)
        print(recovery.describe(run, run_id))
        held = holders.get(run_id, {})
        if held.get("claimed"):
            print(f"    holds a slot of: {', '.join(sorted(set(held['claimed'])))}")
        if held.get("pending"):
            print(f"    waits for a slot of: {', '.join(sorted(set(held['pending'])))}")
        verdict = recovery.judge_run(run, run_id)
        state = {True: "alive", False: "dead", None: "cannot tell"}[verdict.alive]
        print(f"    process: {state}: {verdict.detail}")
    print("\n`pixart-pipeline runs recover` fails and frees the dead ones; "
          "`pixart-pipeline runs fail RUN_ID` any one.")
    return 0


def recover(instance: dg.DagsterInstance) -> int:
    if not recovery.recover(instance):
        print("Nothing to recover: no run with a dead process is in progress or holds a pool slot.")
    return 0


def _resolve(instance: dg.DagsterInstance, prefix: str) -> str | None:
    """The full run id a prefix names, among runs in progress and pool holders (or any run)."""
    known = set(recovery.pool_holders(instance)) | {
        r.run_id for r in instance.get_runs(filters=dg.RunsFilter(statuses=recovery.IN_PROGRESS))
    }
    matches = sorted(r for r in known if r.startswith(prefix))
    if len(matches) == 1:
        return matches[0]
    if not matches and instance.get_run_by_id(prefix) is not None:
        return prefix
    print(f"runs fail: {prefix!r} names {'no run in progress' if not matches else f'several runs: {matches}'}"
          " (see `pixart-pipeline runs`)", file=sys.stderr)
    return None


def fail(instance: dg.DagsterInstance, prefix: str) -> int:
    """Stop the run's processes on this host (SIGTERM, then SIGKILL), mark it failed, free its slots."""
    run_id = _resolve(instance, prefix)
    if run_id is None:
        return 1
    run = instance.get_run_by_id(run_id)
    verdict = recovery.judge_run(run, run_id)
    if verdict.alive:
        pids = recovery.stop_processes(run, run_id)
        print(f"stopped the processes of run {run_id}: {pids}")
    elif verdict.alive is None:
        print(f"note: {verdict.detail}; if processes of it still run there, stop them there")
    recovery.fail_and_free(instance, run_id, "Marked failed with `pixart-pipeline runs fail`.")
    print(f"{recovery.describe(instance.get_run_by_id(run_id), run_id)}: marked failed, its pool slots freed")
    return 0
