"""``python -m pixart_pipeline.training``: a user error is one line and exit status 2; a bug is not.

Only the project's user-error types (InputError and its kinds, RunSpecError, MissingInputError,
InsufficientDataError) are reported as a bad spec or input. Any other exception, a ValueError
included, is a bug: the trainer exits 1 and Python's traceback shows where it happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixart_pipeline.cache import ShardStore, text_item_key
from tests.training.conftest import CAPTIONS

REPO = Path(__file__).resolve().parents[2]


def _cli(spec_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    return subprocess.run([sys.executable, "-m", "pixart_pipeline.training", str(spec_path)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_value_error_that_is_a_bug_keeps_its_traceback(make_spec, tmp_path):
    # A text store whose embeddings are [L] instead of [L, D]: no user input can produce it (the
    # text cache stage writes [L, D]), so when pad_prompt_embeds (cache/reader.py) raises its
    # ValueError mid-run it is an internal error, not a bad spec.
    store = ShardStore(tmp_path / "flat-text")
    store.write({text_item_key(c): {"prompt_embeds": torch.randn(4)} for c in [*CAPTIONS, ""]})
    spec = make_spec("bug", max_train_steps=2)
    spec = type(spec).from_dict(spec.to_dict() | {"text_store": str(store.root)})
    done = _cli(spec.save(tmp_path / "run_spec.json"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback (most recent call last)" in done.stderr
    assert "pad_prompt_embeds" in done.stderr  # the frame that raised it is shown
    assert "ValueError: expected [L, D] embeddings" in done.stderr


@pytest.mark.slow
def test_a_user_error_raised_while_training_is_one_line_with_status_2(make_spec, tmp_path):
    # mixed_precision fp16 on the CPU passes the spec's checks and is refused when the trainer
    # sets up its device (training/loop.make_accelerator raises an InputError).
    spec = make_spec("fp16", max_train_steps=2, mixed_precision="fp16")
    done = _cli(spec.save(tmp_path / "run_spec.json"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: mixed_precision 'fp16' needs a GPU" in done.stderr
    assert "Traceback" not in done.stderr
