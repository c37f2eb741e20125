"""Judging a run's processes from what its launcher recorded, with real processes on this host."""

from __future__ import annotations

import os
import subprocess
import sys

from pixart_pipeline.defs import liveness


def _child(env_run_id: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if env_run_id:
        env[liveness.RUN_ENV] = env_run_id
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)


def test_a_live_owner_is_alive_and_a_killed_one_is_provably_gone():
    child = _child()
    try:
        record = liveness.owner_record(child.pid)
        assert liveness.judge(record, "run-a").alive is True
    finally:
        child.kill()
        child.wait()
    verdict = liveness.judge(record, "run-a")
    assert verdict.alive is False and str(child.pid) in verdict.detail


def test_a_surviving_marked_process_keeps_the_run_alive_after_its_owner_died():
    owner, worker = _child(), _child("run-b")  # the worker: a step process or trainer of run-b
    record = liveness.owner_record(owner.pid)
    owner.kill()
    owner.wait()
    try:
        verdict = liveness.judge(record, "run-b")
        assert verdict.alive is True and str(worker.pid) in verdict.detail
        assert liveness.judge(record, "run-c").alive is False  # another run's marker does not count
    finally:
        worker.kill()
        worker.wait()


def test_a_reused_pid_a_reboot_another_host_and_no_record():
    record = liveness.owner_record()  # this very process: alive
    assert liveness.judge(record, "run-d").alive is True
    # Same pid, another start time: the pid was reused by an unrelated process.
    assert liveness.judge({**record, liveness.PID_START: "1"}, "run-d").alive is False
    # Recorded before this boot: nothing of it can be alive.
    rebooted = liveness.judge({**record, liveness.BOOT: "another-boot"}, "run-d")
    assert rebooted.alive is False and "rebooted" in rebooted.detail
    elsewhere = liveness.judge({**record, liveness.HOST: "gpu-box-7"}, "run-d")
    assert elsewhere.alive is None and "gpu-box-7" in elsewhere.detail
    assert liveness.judge({}, "run-d").alive is None


def test_marked_sets_the_variable_children_inherit_and_restores_it():
    assert liveness.RUN_ENV not in os.environ
    with liveness.marked("run-e"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert liveness.RUN_ENV not in os.environ
        assert liveness.marked_processes("run-e") == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert liveness.marked_processes("run-e") == []
