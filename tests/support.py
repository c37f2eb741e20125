"""Small helpers several test modules share: waiting for a process group to end, and wandb's presence.

Import as ``from support import ...`` (tests/ is on sys.path, as for ``demo_copy``).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

# How long the processes of a stopped run may take to wind down (the step process, torchrun and its
# ranks each handle the signal in turn): one figure for every test that checks none survives.
PROCESS_GRACE_SECONDS = 60.0


def session_leftovers(session_id: int, grace: float = PROCESS_GRACE_SECONDS) -> list[str]:
    """Processes still in session ``session_id`` (``pgrep -a -s``) once they had ``grace`` seconds to end.

    Returns [] as soon as the session is empty, else the ``pid command`` lines still alive at the deadline.
    """
    deadline = time.monotonic() + grace
    while True:
        found = subprocess.run(["pgrep", "-a", "-s", str(session_id)], capture_output=True, text=True)
        leftover = found.stdout.splitlines()
        if not leftover or time.monotonic() >= deadline:
            return leftover
        time.sleep(0.5)


# Set to 1 where wandb is deliberately not installed; `make test` sets nothing, so there a missing
# wandb fails the wandb tests instead of skipping them unseen.
WANDB_OPTIONAL_ENV = "PIXART_TEST_WANDB_OPTIONAL"


def require_wandb() -> None:
    """Fail (or skip, only when PIXART_TEST_WANDB_OPTIONAL=1) when wandb is not importable."""
    try:
        import wandb  # noqa: F401
    except ImportError as error:
        if os.environ.get(WANDB_OPTIONAL_ENV) == "1":
            pytest.skip(f"wandb is not installed and {WANDB_OPTIONAL_ENV}=1")
        pytest.fail(f"wandb is not installed ({error}); install the [test] extra, or set "
                    f"{WANDB_OPTIONAL_ENV}=1 to skip the wandb tests")


def rewrite(path: Path, data: bytes, *, keep_mtime: bool) -> None:
    """Overwrite ``path`` with ``data`` so that its stat visibly changes, whatever the clock tick.

    A write within one file-system timestamp tick of the previous one can leave mtime and ctime as
    they were, which would make a "rewrite is noticed" test pass or fail by luck. Here mtime is set
    explicitly: one second past the old one, or (``keep_mtime``) back to the old one, as a tool that
    restores timestamps would. Either way ctime (which user space cannot set) is made to differ from
    the old ctime by waiting for the clock to move.
    """
    before = path.stat()
    path.write_bytes(data)
    mtime = before.st_mtime_ns if keep_mtime else before.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(before.st_atime_ns, mtime))
    while path.stat().st_ctime_ns == before.st_ctime_ns:
        time.sleep(0.005)
        os.utime(path, ns=(before.st_atime_ns, mtime))  # sets ctime to now
    after = path.stat()
    assert after.st_mtime_ns == mtime and after.st_ctime_ns != before.st_ctime_ns


def age_files(root: Path, seconds: float = 3600.0) -> None:
    """Set the mtime of every file under ``root`` to ``seconds`` ago.

    A scan trusts a file's (size, mtime) only when the mtime is safely older than the scan (the
    racy-mtime rule in data/manifest.py); files a test has just written are re-hashed by the next
    scan. Tests of the shortcut for unchanged *old* files age them first, as real datasets are.
    """
    then = time.time_ns() - int(seconds * 1e9)
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, ns=(then, then))


def hand_clip_scores(clip_path: str, images: list, prompts: list[str]) -> list[float]:
    """CLIP score of images[i] against prompts[i] computed here, not by the code under test:
    ``100 * max(cos(image_embeds, text_embeds), 0)`` from ``CLIPModel.forward``'s projected
    embeddings (torchmetrics' definition), with transformers' own model and processor."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_path).eval()
    processor = CLIPProcessor.from_pretrained(clip_path)
    inputs = processor(text=list(prompts), images=[im.convert("RGB") for im in images],
                       return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        out = model(**inputs)
    image_embeds = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)  # [N, D]
    text_embeds = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)  # [N, D]
    cos = (image_embeds * text_embeds).sum(dim=-1)  # row i with row i
    return [max(100.0 * float(c), 0.0) for c in cos]
