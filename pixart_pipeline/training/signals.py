"""Stopping cleanly on SIGTERM/SIGINT, and the end-of-run check that every process agrees.

Dagster terminating a run sends SIGINT to the trainer (``PipesSubprocessClient``), torchrun passes
SIGTERM to every rank, a scheduler sends SIGTERM. Any of them sets a flag; after each optimizer step
the processes agree (one all-reduce) on whether any got one, write a checkpoint together and stop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator


class StopRequest:
    """Set by SIGTERM/SIGINT; checked once per optimizer step (and agreed on by every process)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGTERM and SIGINT while training (main thread only), then restore the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {sig: signal.signal(sig, self) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def agreed(self, accelerator: Accelerator) -> bool:
        """True on every process when any process got a signal (one tiny all-reduce when distributed)."""
        flag = torch.tensor([0 if self.signum is None else 1], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item())


def check_ranks_agree(accelerator: Accelerator, weights_sha256: str) -> None:
    """Raise if the processes of a data-parallel run ended with different weights (DDP keeps them
    identical; a difference means a broken launch, e.g. ranks that never joined one process group)."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    hashes = gather_object([weights_sha256])
    if len(set(hashes)) != 1:
        raise RuntimeError(f"the {accelerator.num_processes} processes ended with different weights "
                           f"(sha256 by rank: {hashes}); not exporting")
