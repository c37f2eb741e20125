"""EMA: warm-up decay and the averaged values."""

from __future__ import annotations

import torch

from pixart_pipeline.training.ema import EMA, ema_decay_at


def test_decay_warms_up_then_caps():
    assert ema_decay_at(1, 0.999) == 0.0  # first update copies
    assert ema_decay_at(2, 0.999) == 2 / 11
    assert ema_decay_at(10_000, 0.9) == 0.9


def test_ema_tracks_a_moving_parameter_and_copies_back():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"w": p}, decay=0.5)
    values = []
    for step in range(1, 5):
        with torch.no_grad():
            p.fill_(float(step))
        ema.update({"w": p})
        values.append(ema.shadow["w"][0].item())
    # d = 0, 2/11, 0.25, 4/13 (all below the 0.5 cap)
    expected, s = [], 0.0
    for step, d in zip(range(1, 5), (0.0, 2 / 11, 3 / 12, 4 / 13)):
        s = d * s + (1 - d) * step
        expected.append(s)
    assert torch.allclose(torch.tensor(values), torch.tensor(expected))
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(3))
    ema.copy_to(model)
    assert torch.allclose(model.w, torch.full((3,), expected[-1]))


def test_ema_to_moves_the_shadow_and_keeps_its_values():
    ema = EMA({"w": torch.nn.Parameter(torch.arange(3.0))}, 0.9)
    assert ema.to(torch.device("cpu")) is ema
    assert ema.shadow["w"].device.type == "cpu" and ema.shadow["w"].tolist() == [0.0, 1.0, 2.0]
    assert ema.to(torch.device("meta")).shadow["w"].device.type == "meta"


def test_the_training_loop_updates_the_ema_once_per_optimizer_step(make_spec):
    """The trainer's EMA, read from a checkpoint after every optimizer step, equals the average
    computed here from the live weights of those checkpoints with the warm-up decay: one update per
    optimizer step (not per accumulated micro-batch), starting from the first step's weights."""
    from pathlib import Path

    from pixart_pipeline.training.checkpoint import load_checkpoint
    from pixart_pipeline.training.loop import train

    decay = 0.9
    run = train(make_spec("ema-loop", max_train_steps=4, checkpointing_steps=1, gradient_accumulation_steps=2,
                          use_ema=True, ema_decay=decay))
    states = [load_checkpoint(Path(run.run_dir) / "checkpoints" / f"step-{step}") for step in range(1, 5)]
    expected: dict[str, torch.Tensor] = {}
    for step, state in enumerate(states, start=1):
        assert state.ema_updates == step
        d = ema_decay_at(step, decay)
        for name, live in state.transformer.items():
            live = live.float()
            expected[name] = live.clone() if step == 1 else d * expected[name] + (1 - d) * live
        assert set(state.ema) == set(expected)
        for name, shadow in state.ema.items():
            torch.testing.assert_close(shadow, expected[name], rtol=1e-5, atol=1e-6, msg=f"step {step} {name}")
    # the weights moved, so the average is not simply the last (or the first) weights
    last = states[-1]
    assert any(not torch.equal(last.ema[k], last.transformer[k].float()) for k in last.ema)
