"""No crash wedges the `gpu` pool: SIGKILL a real command at several points, the next one completes.

Every command is a separate process in its own process group (tests/pipeline_procs.py), against one
SQLite instance seeded from deploy/local/dagster.yaml and a CPU-sized copy of the demo, as a user's
terminal would run them. Each scenario first shows the wedge the kill leaves (a run still STARTED
that holds the `gpu` slot, where that is the case), then that the next command recovers it and
completes. The seconds from the next command's start to its recovery line are printed (run with
``-s`` to see them): that is how long after a crash the pipeline is working again.
"""

from __future__ import annotations

import re
import shutil

import dagster as dg
import pytest

from demo_copy import REPO, copy_demo, edit_json
from pipeline_procs import materialize_cmd, pipeline_env, run, start, sync_cmd

# Real commands on 2 shared cores: a module fixture syncs the demo once, each scenario runs 2-4 commands.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# CPU-sized: 30 training steps with a checkpoint every 6, so a kill after the first checkpoint
# lands mid-training and the resume has work left.
SMALL = dict(max_train_steps=30, checkpointing_steps=6, lr_warmup_steps=2, validation_num_inference_steps=2,
             validation_prompts=[], validation_resolution="128x128", eval_timesteps=2)
RUN_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class Project:
    def __init__(self, root):
        self.root = root
        self.config = copy_demo(root, config=SMALL, dataset={"synthetic_num_images": 24})
        self.home = root / "dagster_home"
        self.home.mkdir()
        shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", self.home / "dagster.yaml")
        self.env = pipeline_env(self.home, self.config)
        self.logs = root / "logs"
        self.count = 0

    def log(self, name: str):
        self.count += 1
        return self.logs / f"{self.count:02d}-{name}.log"

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def gpu_holders(self) -> dict[str, dg.DagsterRunStatus]:
        with self.instance() as instance:
            info = instance.event_log_storage.get_concurrency_info("gpu")
            return {s.run_id: instance.get_run_by_id(s.run_id).status for s in info.claimed_slots}

    def materializations(self, key: str) -> int:
        with self.instance() as instance:
            return len(instance.fetch_materializations(dg.AssetKey(key.split("/")), limit=1000).records)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    p = Project(tmp_path_factory.mktemp("crash"))
    code, out, _ = run(sync_cmd(p.config), p.env, p.log("first-sync"))
    assert code == 0, out[-4000:]
    return p


def _assert_wedged(project) -> str:
    """The state a SIGKILL leaves: a run still STARTED holding the one `gpu` slot. Its run id."""
    holders = project.gpu_holders()
    assert list(holders.values()) == [dg.DagsterRunStatus.STARTED], holders
    return next(iter(holders))


def test_sync_killed_mid_training_next_sync_recovers_and_resumes(project):
    edit_json(project.config, {"learning_rate": 0.002})
    first = start(sync_cmd(project.config), project.env, project.log("sync-killed"))
    first.wait_for(r"saved checkpoint \S+step-6")
    first.kill_group()
    dead = _assert_wedged(project)

    second = start(sync_cmd(project.config), project.env, project.log("sync-after-kill"))
    recovered_at = second.wait_for(rf"recovered run {dead}")
    started_at = second.wait_for(r"-> trained_checkpoint")
    assert second.finish() == 0, second.text()[-4000:]
    out = second.text()
    # Exact resume: the trainer picks up the killed run's checkpoint instead of starting over.
    first_step = int(re.search(r"steps (\d+) -> 30 of 30", out).group(1))
    assert first_step >= 6, out[-3000:]
    assert "Synced 2 asset(s)" in out and project.gpu_holders() == {}
    with project.instance() as instance:
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    print(f"\n[timing] sync after a SIGKILL mid-training: recovered the dead run {recovered_at:.1f}s after "
          f"start, training resumed from step {first_step} ({started_at:.1f}s after start)")


@pytest.mark.parametrize("kill_at, label", [
    (r"Launching subprocess for \"vae_cache__shapes\"", "before the step starts"),
    (r"STEP_START - Started execution of step \"vae_cache__shapes\"", "mid-encode"),
])
def test_materialize_killed_next_materialize_and_sync_complete(project, kill_at, label):
    before = project.materializations("vae_cache/shapes")
    first = start(materialize_cmd("vae_cache/shapes"), project.env, project.log("materialize-killed"))
    first.wait_for(kill_at)
    first.kill_group()
    holders = project.gpu_holders()
    assert all(status == dg.DagsterRunStatus.STARTED for status in holders.values()), holders

    second = start(materialize_cmd("vae_cache/shapes"), project.env, project.log("materialize-after-kill"))
    recovered = second.wait_for("recovered run") if holders else None
    assert second.finish() == 0, second.text()[-4000:]
    assert project.materializations("vae_cache/shapes") == before + 1
    for dead in holders:
        assert f"recovered run {dead}" in second.text()

    code, out, _ = run(sync_cmd(project.config), project.env, project.log("sync-after-materialize"))
    assert code == 0, out[-4000:]
    assert project.gpu_holders() == {}
    if recovered is not None:
        print(f"\n[timing] dagster asset materialize after a SIGKILL {label}: dead run recovered {recovered:.1f}s "
              "after start")


def test_a_live_holder_fails_the_next_launch_at_once_and_runs_fail_frees_it(project):
    edit_json(project.config, {"learning_rate": 0.003, "max_train_steps": 200})
    holder = start(sync_cmd(project.config), project.env, project.log("sync-holding"))
    holder.wait_for(r"step 1/200")
    (live,) = project.gpu_holders()

    # Both other front doors fail within seconds, naming the run and the command that frees it.
    for cmd, name in [(sync_cmd(project.config), "sync-blocked"), (materialize_cmd("text_embed_cache"), "mat-blocked")]:
        code, out, seconds = run(cmd, project.env, project.log(name), timeout=120)
        assert code != 0, out[-3000:]
        assert f"run {live}" in out and f"pixart-pipeline runs fail {live}" in out, out[-3000:]
        assert "is alive" in out
        print(f"\n[timing] {name}: failed after {seconds:.1f}s (process start included)")
    assert holder.popen.poll() is None and project.materializations("trained_checkpoint") >= 1

    listing = run([*sync_cmd(project.config)[:3], "runs"], project.env, project.log("runs"))[1]
    assert live in listing and "holds a slot of: gpu" in listing and "alive" in listing
    code, out, _ = run([*sync_cmd(project.config)[:3], "runs", "fail", live[:8]], project.env, project.log("runs-fail"))
    assert code == 0 and "marked failed" in out, out
    assert holder.popen.wait(timeout=60) != 0 and project.gpu_holders() == {}

    edit_json(project.config, {"max_train_steps": 30})
    code, out, _ = run(sync_cmd(project.config), project.env, project.log("sync-after-fail"))
    assert code == 0, out[-4000:]


def test_the_daemon_sensor_frees_a_dead_runs_slot_without_any_launch(project):
    """The UI's path: `make ui`'s daemon evaluates crash_recovery, which frees what a dead run held."""
    from pixart_pipeline.defs.recovery_sensor import crash_recovery_sensor

    first = start(materialize_cmd("text_embed_cache"), project.env, project.log("materialize-killed-daemon"))
    first.wait_for(r"Launching subprocess for \"text_embed_cache\"")
    first.kill_group()
    dead = _assert_wedged(project)
    with project.instance() as instance:
        result = crash_recovery_sensor(dg.build_sensor_context(instance=instance))
        assert dead in str(result.skip_message)
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert project.gpu_holders() == {}


def test_a_ui_launched_run_killed_mid_training_the_next_ui_run_resumes(project):
    """The UI path for real: `dagster dev` (daemon, queue, run workers), runs submitted over GraphQL."""
    import os
    import signal
    import sys
    import time

    from dagster_graphql import DagsterGraphQLClient

    from pixart_pipeline.defs import liveness
    from postgres_server import free_port

    # The test sees "saved checkpoint ... step-6" by polling the instance each second: 300 steps keep the
    # trainer busy well past that (30 could finish before the kill lands, leaving nothing to resume).
    edit_json(project.config, {"learning_rate": 0.005, "max_train_steps": 300})
    port = free_port()
    dev = start([sys.executable, "-m", "dagster", "dev", "-m", "pixart_pipeline.definitions", "-h", "127.0.0.1",
                 "-p", str(port)], project.env, project.log("dagster-dev"))
    try:
        dev.wait_for(r"Serving dagster-webserver", timeout=300)
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)

        def wait_run(run_id, done, timeout=400.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with project.instance() as instance:
                    run = instance.get_run_by_id(run_id)
                    logs = [e.user_message for e in instance.all_logs(run_id)]
                    if done(run, logs):
                        return run, logs
                time.sleep(1)
            raise AssertionError(f"run {run_id} not done in {timeout}s: {run.status if run else None}\n{logs[-20:]}")

        deadline = time.monotonic() + 120
        while True:  # the webserver logs "Serving" a moment before it accepts connections
            try:
                first = client.submit_job_execution("__ASSET_JOB", asset_selection=["trained_checkpoint"])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        run, _ = wait_run(first, lambda r, logs: any("saved checkpoint" in m and "step-6" in m for m in logs))
        # An OOM kill of the run: its worker, step process and trainer, all at once.
        pids = [int(run.tags["pixart/pid"]), *liveness.marked_processes(first)]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        assert first in project.gpu_holders()

        second = client.submit_job_execution("__ASSET_JOB", asset_selection=["trained_checkpoint"])
        run, logs = wait_run(second, lambda r, logs: r.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE))
        assert run.status == dg.DagsterRunStatus.SUCCESS, logs[-20:]
        resumed = [m for m in logs if re.search(r"steps (\d+) -> 300 of 300", m)]
        assert resumed and not re.search(r"steps 0 -> 300 of 300", resumed[0]), resumed
        with project.instance() as instance:
            assert instance.get_run_by_id(first).status == dg.DagsterRunStatus.FAILURE
        step = re.search(r"steps (\d+) -> 300", resumed[0]).group(1)
        print(f"\n[timing] UI run after a SIGKILL mid-training: next UI run succeeded {time.monotonic() - killed:.1f}s "
              f"after the kill, training resumed from step {step}")
    finally:
        dev.kill_group()
    assert project.gpu_holders() == {}
