"""Checkpoints: atomic, found only when complete, pruned safely, restored without pickle."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pixart_pipeline.fileio import atomic_save_tensors
from pixart_pipeline.training import checkpoint as ckpt
from pixart_pipeline.training.optim import (
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    scheduler_state_from_json,
    scheduler_state_to_json,
)


def _tiny_training_state(steps: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
    for _ in range(steps):
        model(torch.randn(2, 4)).pow(2).mean().backward()
        opt.step(), sched.step(), opt.zero_grad()
    return model, opt, sched


def _save(run_dir, step, **kw):
    model, opt, sched = _tiny_training_state()
    return ckpt.save_checkpoint(run_dir, step, model.state_dict(), optimizer_state_to_flat(opt),
                                scheduler_state_to_json(sched), {"epoch": 0, "position": step}, **kw)


def test_latest_is_the_highest_complete_checkpoint(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    root = tmp_path / "checkpoints"
    # what a killed run leaves: a .tmp folder (even with a marker) and a folder without the marker
    (root / "step-30.tmp").mkdir()
    (root / "step-30.tmp" / ckpt.MARKER).write_text("{}")
    (root / "step-40").mkdir()
    (root / "step-40" / "transformer.safetensors").write_bytes(b"half")
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-20"
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10, 20]
    assert sorted(p.name for p in ckpt.remove_incomplete(tmp_path)) == ["step-30.tmp", "step-40"]
    assert sorted(p.name for p in root.iterdir()) == ["step-10", "step-20"]


def test_a_save_that_fails_midway_never_becomes_latest(tmp_path):
    _save(tmp_path, 10)
    model, opt, sched = _tiny_training_state()
    # the sampler state is not JSON: fails after the weights were written
    with pytest.raises(TypeError, match="not JSON serializable"):
        ckpt.save_checkpoint(tmp_path, 20, model.state_dict(), optimizer_state_to_flat(opt),
                             scheduler_state_to_json(sched), {"epoch": object()})
    root = tmp_path / "checkpoints"
    assert (root / "step-20.tmp" / "transformer.safetensors").exists()
    assert not (root / "step-20").exists()
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-10"


def test_prune_keeps_the_limit_and_never_the_resume_source(tmp_path):
    for step in (10, 20, 30, 40):
        _save(tmp_path, step)
    root = tmp_path / "checkpoints"
    # step-40 was just written, step-10 is the resume source: exactly 2 remain, both protected ones
    deleted = ckpt.prune_checkpoints(tmp_path, limit=2, protect=[root / "step-40", root / "step-10"])
    assert [p.name for p in deleted] == ["step-20", "step-30"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10, 40]
    ckpt.prune_checkpoints(tmp_path, limit=1)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [40]


def test_a_resave_killed_between_its_renames_is_restored(tmp_path):
    """Re-saving step-N renames the old folder aside before moving the new one in; a kill between the
    two renames leaves only step-N.old-*. Cleanup must put it back, not delete the only copy."""
    path = _save(tmp_path, 10)
    aside = path.with_name("step-10.old-deadbeef")
    path.rename(aside)  # the state a kill between the two renames leaves
    assert ckpt.latest_checkpoint(tmp_path) is None
    ckpt.remove_incomplete(tmp_path)
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert ckpt.load_checkpoint(path).global_step == 10


def test_load_restores_optimizer_and_schedule_exactly(tmp_path):
    path = _save(tmp_path, 3)
    assert not [p for p in path.iterdir() if p.suffix in (".pt", ".bin", ".pkl")]
    state = ckpt.load_checkpoint(path)
    model, opt, sched = _tiny_training_state()

    # a fresh optimizer + scheduler loaded from the files continues exactly like the original
    torch.manual_seed(0)
    model2 = torch.nn.Linear(4, 3)
    model2.load_state_dict(state.transformer)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2, betas=(0.8, 0.95))
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: min(1.0, (s + 1) / 5))
    opt2.load_state_dict(optimizer_state_from_flat(state.optimizer["tensors"], state.optimizer["rest"]))
    sched2.load_state_dict(scheduler_state_from_json(state.lr_scheduler))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    x = torch.randn(2, 4)
    for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):
        m(x).pow(2).mean().backward()
        o.step(), s.step()
    assert torch.equal(model.weight, model2.weight) and sched.get_last_lr() == sched2.get_last_lr()


def test_corrupt_file_is_detected(tmp_path):
    path = _save(tmp_path, 5)
    tensors = load_file(str(path / "transformer.safetensors"))
    tensors["weight"] = tensors["weight"] + 1
    atomic_save_tensors(path / "transformer.safetensors", tensors)
    with pytest.raises(ValueError, match="transformer.safetensors is missing or does not match"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-99")


def test_rng_states_round_trip_without_pickle():
    tensors, rest = ckpt.capture_rng_state()
    json.dumps(rest)  # plain JSON
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    ckpt.restore_rng_state(tensors, rest)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_every_process_rng_state_is_saved_and_restored_by_rank(tmp_path):
    model, opt, sched = _tiny_training_state()
    torch.manual_seed(1)
    rank0 = ckpt.capture_rng_state()
    torch.manual_seed(2)
    rank1 = ckpt.capture_rng_state()
    path = ckpt.save_checkpoint(tmp_path, 5, model.state_dict(), optimizer_state_to_flat(opt),
                                scheduler_state_to_json(sched), {"epoch": 0}, rng_states=[rank0, rank1])
    assert (path / "rng-1.safetensors").is_file() and (path / "rng-1.json").is_file()
    state = ckpt.load_checkpoint(path)  # rng-1 files are covered by the COMPLETE checksums too
    expected = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected[seed] = torch.rand(3)
    for rank, seed in ((0, 1), (1, 2)):
        ckpt.restore_rng_state(*state.rng_for(rank))
        assert torch.equal(torch.rand(3), expected[seed])
    assert state.rng_for(5) is state.rng  # unknown rank: rank 0's (older checkpoints had only those)
