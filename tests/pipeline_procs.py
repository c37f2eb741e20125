"""Run the pipeline's real commands as separate processes, each in its own process group, and kill them.

What the crash tests need: start `pixart-pipeline sync` or `dagster asset materialize` against a
test's own DAGSTER_HOME and config (output in a log file), wait for a line in that log, SIGKILL the
whole process group (the CLI, its step processes, the trainer), and time the next command.
Import as ``from pipeline_procs import ...`` (tests/ is on sys.path, as for ``demo_copy``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pipeline_env(home: Path, config: Path, **extra: str) -> dict[str, str]:
    """The environment of a command run against instance ``home`` and config ``config``."""
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        PIXART_CONFIG=str(config),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def sync_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "pixart_pipeline.cli", "sync", "--config", str(config)]


def materialize_cmd(selection: str) -> list[str]:
    return [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "pixart_pipeline.definitions",
            "--select", selection]


@dataclass
class Proc:
    """A started command: its process (leader of its own group), log file and start time."""

    popen: subprocess.Popen
    log: Path
    started: float

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float = 300.0) -> float:
        """Seconds since start when ``pattern`` (a regex) first appears in the log; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text()):
                return time.monotonic() - self.started
            if self.popen.poll() is not None:
                if re.search(pattern, self.text()):
                    return time.monotonic() - self.started
                raise AssertionError(f"exited ({self.popen.returncode}) before {pattern!r}:\n{self.text()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text()[-4000:]}")

    def kill_group(self) -> None:
        """SIGKILL every process of the command's group (as an OOM kill or a closed terminal would)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _group_alive(self.popen.pid):
            time.sleep(0.1)

    def finish(self, timeout: float = 600.0) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"still running after {timeout}s:\n{self.text()[-4000:]}") from None


def _group_alive(pgid: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode == 0


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Proc:
    """Start ``cmd`` in a new session (its own process group), stdout and stderr into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        popen = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd or REPO,
                                 start_new_session=True)
    return Proc(popen, log, time.monotonic())


def run(cmd: list[str], env: dict[str, str], log: Path, timeout: float = 600.0) -> tuple[int, str, float]:
    """Run ``cmd`` to the end: (exit status, its output, seconds)."""
    proc = start(cmd, env, log)
    code = proc.finish(timeout)
    return code, proc.text(), time.monotonic() - proc.started
