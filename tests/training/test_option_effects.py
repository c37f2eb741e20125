"""Options observed doing what they say, through the trainer's own code paths (a no-op option fails
these): EMA weights exported, caption dropout to the empty prompt, noise offset, gradient
checkpointing, the loss-curve image in the asset metadata."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from safetensors.torch import load_file

from pixart_pipeline.training.checkpoint import load_checkpoint
from pixart_pipeline.training.loop import micro_batch_generator, train
from pixart_pipeline.training.setup import trainable_transformer
from pixart_pipeline.training.loss import draw_noise, pixart_epsilon_loss

EXPORTED = "pipeline/transformer/diffusion_pytorch_model.safetensors"


def test_use_ema_exports_the_ema_shadow_not_the_live_weights(make_spec):
    run = train(make_spec("ema-export", max_train_steps=4, checkpointing_steps=4, use_ema=True, ema_decay=0.9))
    exported = load_file(str(Path(run.run_dir) / EXPORTED))
    state = load_checkpoint(Path(run.run_dir) / "checkpoints" / "step-4")  # written after the last step
    assert state.ema is not None and set(state.ema) == set(exported)  # every parameter is trained here
    assert all(torch.equal(exported[k], state.ema[k]) for k in exported)
    # ... and the shadow is not the live weights (else the test above would prove nothing)
    assert any(not torch.equal(state.ema[k], state.transformer[k]) for k in state.ema)


def test_caption_dropout_one_trains_on_the_empty_prompt_only(make_spec, caches, tmp_path):
    """p = 1.0 on the real captions trains exactly as p = 1.0 on items whose captions are all "" (same
    random draws, same batches). If dropout did nothing, the first run would see the real captions."""
    table = pq.read_table(caches["items"])
    empty = table.set_column(table.column_names.index("text_key"), "text_key",
                             pa.array([caches["empty_text_key"]] * table.num_rows, pa.string()))
    pq.write_table(empty, tmp_path / "empty.parquet")
    assert set(empty.column("text_key").to_pylist()) == {caches["empty_text_key"]}

    dropped = train(make_spec("dropout-all", max_train_steps=3, caption_dropout_probability=1.0))
    spec = make_spec("captions-empty", max_train_steps=3, caption_dropout_probability=1.0)
    spec = spec.replace(items=str(tmp_path / "empty.parquet"))
    assert train(spec).weights_sha256 == dropped.weights_sha256
    kept = train(make_spec("dropout-none", max_train_steps=3, caption_dropout_probability=0.0))
    assert kept.weights_sha256 != dropped.weights_sha256  # the captions do matter to the weights


def test_noise_offset_zero_is_plain_randn_and_an_offset_shifts_each_channel():
    shape = (2, 4, 8, 6)
    plain = draw_noise(shape, micro_batch_generator(7, 3), 0.0)
    assert torch.equal(plain, torch.randn(shape, generator=micro_batch_generator(7, 3)))
    gen = micro_batch_generator(7, 3)
    offset = draw_noise(shape, gen, 0.1)
    shift = offset - plain  # the same first draw, plus 0.1 * one normal per (sample, channel)
    assert shift.abs().amax() > 0
    assert torch.allclose(shift, shift[:, :, :1, :1].expand(shape), atol=1e-6)  # constant over h, w
    reference = micro_batch_generator(7, 3)
    torch.randn(shape, generator=reference)
    assert torch.allclose(shift[:, :, 0, 0], 0.1 * torch.randn((2, 4, 1, 1), generator=reference)[:, :, 0, 0],
                          atol=1e-6)
    # with 0 the extra draw is not made: the next draw (the timesteps) is what plain randn leaves
    after_zero = micro_batch_generator(7, 3)
    draw_noise(shape, after_zero, 0.0)
    after_randn = micro_batch_generator(7, 3)
    torch.randn(shape, generator=after_randn)
    assert torch.equal(torch.randint(0, 1000, (4,), generator=after_zero),
                       torch.randint(0, 1000, (4,), generator=after_randn))


def _block_forwards(transformer: torch.nn.Module) -> int:
    """Calls of the first transformer block in one training forward + backward on a tiny batch."""
    from diffusers import DDPMScheduler

    # counted by wrapping the block's forward (it still runs): torch's checkpoint recompute calls
    # forward again but does not fire module forward hooks
    block = transformer.transformer_blocks[0]
    calls, forward = [], block.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    block.forward = counted
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=gen)
    embeds = torch.randn(1, 3, transformer.config.caption_channels, generator=gen)
    loss = pixart_epsilon_loss(transformer, latents, torch.randn_like(latents), torch.tensor([10]), embeds,
                               torch.ones(1, 3, dtype=torch.long), DDPMScheduler())
    loss.mean().backward()
    del block.forward  # back to the class's method
    return len(calls)


def test_gradient_checkpointing_is_switched_on_in_the_trainers_model(make_spec):
    spec = make_spec("gc")
    plain = trainable_transformer(spec)
    checkpointed = trainable_transformer(spec.replace(gradient_checkpointing=True))
    assert not plain.is_gradient_checkpointing and checkpointed.is_gradient_checkpointing
    assert checkpointed.training
    # checkpointing recomputes the block's forward in the backward pass: 2 calls instead of 1
    assert (_block_forwards(plain), _block_forwards(checkpointed)) == (1, 2)


def test_the_loss_curve_image_is_in_the_trained_checkpoint_metadata(make_spec, caches, tmp_path):
    from pixart_pipeline.training.result import run_metadata

    spec = make_spec("curve", max_train_steps=6)
    run = train(spec)
    run_dir = Path(run.run_dir)
    metadata = run_metadata(run, spec.items)  # what the trainer reports to Dagster
    markdown = metadata["images_md"]
    encoded = markdown.split("](data:image/png;base64,", 1)[1].rstrip(")")
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as shown, Image.open(run_dir / "loss.png") as png:
        assert shown.size == png.size == (480, 240)
        assert shown.convert("RGB").tobytes() == png.convert("RGB").tobytes()
    assert json.loads((run_dir / "result.json").read_text())["steps"] == metadata["steps"] == 6
