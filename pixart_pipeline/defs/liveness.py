"""Is a run's process still alive? Answered from /proc on this host, without Dagster.

A run records where it runs (``owner_record``: host, boot id, pid and that pid's start time) and
marks every process it starts with ``RUN_ENV=<run id>`` in their environment (step processes, the
trainer, torchrun ranks inherit it). ``judge`` then says, for a run on this host, whether any of
those processes is left; for a run on another host it says it cannot tell. The start time guards
against pid reuse, the boot id against a reboot (after which no process of the run can be alive).
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# Inherited by every process a run starts: how a run's step processes and trainer are found.
RUN_ENV = "PIXART_DAGSTER_RUN_ID"

HOST, BOOT, PID, PID_START, LAUNCHED_BY = "host", "boot_id", "pid", "pid_start", "launched_by"


def this_host() -> str:
    return socket.gethostname()


def boot_id() -> str:
    """This boot's id (changes on every reboot); "" where the kernel does not expose it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The start time of a live (non-zombie) process, in clock ticks since boot; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] in ("Z", "X"):  # a zombie has exited; only its exit status is left
        return None
    return fields[19]  # field 22 of proc(5), counted from field 3


def launched_by() -> str:
    """A short name of the command that started this process ("pixart-pipeline sync", "dagster asset ...")."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    # `python -m pixart_pipeline.cli` / `python -m dagster` show as the commands they stand for.
    name = {"cli.py": "pixart-pipeline", "__main__.py": program.parent.name}.get(program.name, program.name)
    words = list(itertools.takewhile(lambda a: not a.startswith("-"), sys.argv[1:3]))
    return " ".join([name, *words])[:60]


def owner_record(pid: int | None = None) -> dict[str, str]:
    """What a run records about the process that runs it (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return {
        HOST: this_host(),
        BOOT: boot_id(),
        PID: str(pid),
        PID_START: process_start(pid) or "",
        LAUNCHED_BY: launched_by(),
    }


@contextmanager
def marked(run_id: str) -> Iterator[None]:
    """Processes started inside this block carry ``RUN_ENV=run_id`` (so ``judge`` can find them)."""
    before = os.environ.get(RUN_ENV)
    os.environ[RUN_ENV] = run_id
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = before


def marked_processes(run_id: str) -> list[int]:
    """Live processes of this host whose environment carries ``RUN_ENV=run_id`` (this one excluded)."""
    needle = f"\0{RUN_ENV}={run_id}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = b"\0" + (entry / "environ").read_bytes() + b"\0"
        except OSError:  # gone meanwhile, or another user's process
            continue
        if needle in environ and process_start(int(entry.name)) is not None:
            found.append(int(entry.name))
    return sorted(found)


@dataclass(frozen=True)
class Verdict:
    """alive: True (a process of the run is alive), False (provably none left), None (cannot tell)."""

    alive: bool | None
    detail: str


def judge(record: dict[str, str], run_id: str) -> Verdict:
    """Whether the run that wrote ``record`` (``owner_record``) still has a live process."""
    host = record.get(HOST)
    if not host or not record.get(PID, "").isdigit():
        return Verdict(None, "it recorded no host and pid (started by an older version or another tool)")
    if host != this_host():
        return Verdict(None, f"it runs on host {host}, not this one ({this_host()})")
    pid = int(record[PID])
    if record.get(BOOT) and boot_id() and record[BOOT] != boot_id():
        return Verdict(False, f"pid {pid}: host {host} has rebooted since the run started")
    start = process_start(pid)
    if start is not None and start == record.get(PID_START, start):
        return Verdict(True, f"pid {pid} on {host} is alive")
    others = marked_processes(run_id)
    if others:
        return Verdict(True, f"pid {pid} has exited but its process(es) {others} on {host} are alive")
    return Verdict(False, f"pid {pid} on {host} has exited and no process of the run is left")
