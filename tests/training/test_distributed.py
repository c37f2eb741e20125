"""Data-parallel training with real processes: ``torchrun --standalone --nproc_per_node 2`` on the CPU
(gloo). Not ``accelerate launch --cpu``, which silently runs a single process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support import session_leftovers

from pixart_pipeline.training import checkpoint as ckpt
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
ENV = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _torchrun(spec_path: Path, *args: str, **popen) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "pixart_pipeline.training", str(spec_path), *args]


def _env() -> dict[str, str]:
    env = os.environ | ENV
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    return env


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(make_spec, tmp_path):
    # 8 items, batch 2 -> 4 batches per epoch; a 2-process step draws 2 of them, so 2 steps per epoch
    # cosine with warm-up (not constant): the schedule must step once per optimizer step on every rank
    schedule = {"lr_scheduler": "cosine", "lr_warmup_steps": 3}
    spec = make_spec("ddp", max_train_steps=8, num_processes=2, checkpointing_steps=4, **schedule)
    spec = spec.replace(record_items=True)
    path = spec.save(tmp_path / "ddp.json")
    done = subprocess.run(_torchrun(path), env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = Path(spec.run_dir)

    # both ranks hold identical weights, and rank 0 exported them
    ranks = [json.loads((run / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert json.loads((run / "result.json").read_text())["steps"] == 8

    # each sample of an epoch is seen by exactly one rank. With 2 x 2 draws per step the 2-item
    # landscape bucket is smaller than one step and dropped (small_bucket_rule "drop"), so an epoch
    # is the 6 square items in 3 batches; whole epochs are 0..4 of the 16 draws.
    per_epoch: dict[int, dict[int, list[int]]] = {}
    for r in ranks:
        for step, epoch, *indices in r["batches"]:
            per_epoch.setdefault(epoch, {}).setdefault(r["rank"], []).extend(indices)
    assert sorted(per_epoch) == [0, 1, 2, 3, 4, 5]
    for epoch in range(5):
        by_rank = per_epoch[epoch]
        assert set(by_rank) == {0, 1}, epoch  # both ranks train every epoch
        assert sorted(by_rank[0] + by_rank[1]) == list(range(6)), epoch  # every item exactly once
        assert not set(by_rank[0]) & set(by_rank[1])  # ... on exactly one rank

    # one process accumulating 2 batches per step draws the same batches and noise: same loss and weights
    single = train(make_spec("single", max_train_steps=8, gradient_accumulation_steps=2, checkpointing_steps=4,
                             **schedule))
    two = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    one = [r["loss"] for r in read_metrics(Path(single.run_dir) / "metrics.jsonl")]
    # the same learning rate at every step: warm-up 0, 1/3, 2/3 of 1e-3, then the cosine decay
    lrs = [r["lr"] for r in read_metrics(run / "metrics.jsonl")]
    assert lrs == [r["lr"] for r in read_metrics(Path(single.run_dir) / "metrics.jsonl")]
    assert lrs[:4] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3]) and lrs[4:] == sorted(lrs[4:], reverse=True)
    assert lrs[-1] < lrs[4]
    assert len(two) == len(one) == 8
    assert torch.allclose(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-6), (two, one)
    name = "diffusion_pytorch_model.safetensors"
    a = load_file(str(run / "pipeline" / "transformer" / name))
    b = load_file(str(Path(single.run_dir) / "pipeline" / "transformer" / name))
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)

    # resuming a 2-process checkpoint with 1 process is refused, naming both counts
    one_proc = spec.replace(num_processes=1)
    with pytest.raises(ValueError, match=r"written by a run with 2 process\(es\) but this run has 1"):
        train(one_proc)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_with_a_resumable_checkpoint(make_spec, tmp_path):
    spec = make_spec("term", max_train_steps=500, num_processes=2, checkpointing_steps=1000)
    path = spec.save(tmp_path / "term.json")
    proc = subprocess.Popen(_torchrun(path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    metrics = Path(spec.run_dir) / "metrics.jsonl"
    deadline = time.time() + 120
    while len(read_metrics(metrics)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGTERM)  # what a scheduler or `kill` sends the launcher
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0
    # no rank survives: nothing is left in the launcher's session
    assert session_leftovers(proc.pid) == [], out[-2000:]

    latest = ckpt.latest_checkpoint(Path(spec.run_dir))
    assert latest is not None, out[-3000:]  # written on the signal, not by the 1000-step interval
    state = ckpt.load_checkpoint(latest)  # verifies every file
    assert state.global_step >= 3 and state.extra["world_size"] == 2
    assert sorted(state.rng_by_rank) == [1]  # rank 1's RNG states beside rank 0's rng.*
    assert "stopping on signal" in out
