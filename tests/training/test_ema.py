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


def test_ema_shadow_moves_to_the_training_device():
    """The loop moves the shadow next to the prepared model (on a GPU: no per-step copies to the CPU)."""
    import torch

    from pixart_pipeline.training.ema import EMA

    params = {"w": torch.nn.Parameter(torch.ones(3))}
    ema = EMA(params, 0.9).to(torch.device("meta"))
    assert ema.shadow["w"].device.type == "meta"
