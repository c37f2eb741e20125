"""What the browser test needs around it: Debian's Chromium, a synced demo instance, `dagster dev`.

No browser can be downloaded here (Playwright's own download is blocked), so Playwright drives the
system's Chromium through ``executable_path``. CI runs as root on a fresh Debian machine with only
package-registry network: there the fixture installs the `chromium` package; anywhere it cannot,
the test fails with the command to run (it never skips unseen).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    """The path of an installed Chromium binary, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_chromium() -> str:
    """Chromium's path; installs Debian's `chromium` package first when missing and we are root."""
    found = find_chromium()
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.fail(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
        found = find_chromium()
        if found:
            return found
    pytest.fail("the browser test needs Debian's Chromium: run `sudo apt-get install -y chromium` "
                "(Playwright drives it through executable_path; its own browser download is not used)")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict, *args: str, timeout: float = 900) -> str:
    """Run `pixart-pipeline ARGS` (as the console script would) and return its stdout; fail on error."""
    done = subprocess.run([sys.executable, "-m", "pixart_pipeline.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"pixart-pipeline {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return done.stdout


def _reset_sigint() -> None:
    # A shell started without a terminal leaves SIGINT ignored, and children inherit that: `dagster
    # dev` would then never hear its stop signal. Restore the default in the child before exec.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DagsterDev:
    """`dagster dev` over ``env``'s DAGSTER_HOME and PIXART_CONFIG, in its own session (process group),
    so that stopping it also stops its webserver, daemon, code server and the run workers it launched."""

    def __init__(self, env: dict, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        dagster = Path(sys.executable).with_name("dagster")
        self.proc = subprocess.Popen(
            [str(dagster), "dev", "-m", "pixart_pipeline.definitions", "-h", "127.0.0.1", "-p", str(self.port)],
            env=env, cwd=env["DAGSTER_HOME"], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_reset_sigint,
        )

    def wait_ready(self, timeout: float = 300) -> None:
        """Until the webserver answers (the code location may still be loading: pages wait for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        pytest.fail(f"dagster dev did not answer on {self.url} within {timeout:.0f}s; see {self.log.name}")

    def stop(self, grace: float = 30) -> None:
        """SIGINT to the whole group (what Ctrl-C does), then SIGKILL whatever is left after ``grace``."""
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        try:
            os.killpg(pgid, signal.SIGINT)
            self.proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()
