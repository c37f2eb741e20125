"""Real-scale GPU benchmark: training, T5-XXL and VAE throughput, and peak memory vs `estimate`.

    .venv/bin/python benchmarks/gpu.py            # one GPU, full-size random-weight models, a few minutes
    .venv/bin/python benchmarks/gpu.py --smoke    # the same code paths, tiny widths, on the CPU (CI)
    make gpu-check                                # on a GPU machine: the `gpu` tests, then this benchmark

(a) Training samples/s and MFU at 512 and 1024 px, bf16 autocast over float32 master weights, the
    full-size PixArt-Sigma-XL-2 transformer with random weights: ours (prompt embeds padded per
    batch to the longest caption of a realistic length mix, fused AdamW: what the trainer does; and
    the same with regional torch.compile, ``dynamo_backend: inductor``) against a plain
    diffusers-example-style loop (text padded to 300, default AdamW) in the same run.
(b) T5-XXL (random weights, bf16) captions/s on the same caption-length mix: batches sorted by
    length (what the text cache does) against every caption padded to 300.
(c) SDXL VAE encode images/s at 1024 px: bucketed batches of ``--vae-batch`` against batch 1, and
    the bucketed batches in ``channels_last`` (``vae_channels_last``).
(d) Each measured stage's ``torch.cuda.max_memory_allocated`` against ``models/estimate.py``.

MFU = FLOPs per sample (counted on meta tensors, ``models/measure.py``) x samples/s / the GPU's
dense bf16 peak (``--peak-tflops``; known: H100 SXM / H200 989, H100 PCIe 756). Without ``--smoke`` the
tables are appended to BENCHMARKS.md; ``--smoke`` only prints.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

from pixart_pipeline.cache.vae import input_memory_format, to_channels_last  # noqa: E402
from pixart_pipeline.config.models import TrainingConfig  # noqa: E402
from pixart_pipeline.models import estimate, measure, presets  # noqa: E402
from pixart_pipeline.training.speed import apply_tf32, compile_transformer  # noqa: E402
from pixart_pipeline.training.loss import pixart_epsilon_loss  # noqa: E402

PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0}  # dense bf16, by device-name substring
GIB = 2**30
# Tiny widths for --smoke: same classes and code paths, CPU-sized.
SMOKE_TRANSFORMER = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, caption_channels=32)
SMOKE_VAE = dict(block_out_channels=[8, 16, 16, 16], norm_num_groups=4, layers_per_block=1)
SMOKE_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=512)


def caption_lengths(count: int, limit: int, seed: int = 0) -> list[int]:
    """A realistic T5 token-length mix: log-normal around 60 tokens (short alt-text to long
    synthetic captions), clipped to [8, limit]."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(count, generator=gen) * 0.6 + 4.1)
    return [int(min(max(v, 8), limit)) for v in lengths.tolist()]


def timed(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls (synchronising the GPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_step_fn(model, optimizer, batch: int, size: int, text_tokens: int, device, dtype) -> Callable[[], None]:
    """One optimizer step (loss, backward, clip, step, zero_grad) on random latents."""
    scheduler = DDPMScheduler()
    inputs = measure.transformer_inputs(batch, size, size, text_tokens, model.config.in_channels,
                                        model.config.caption_channels, device=device)
    latents, noise = inputs["hidden_states"], torch.randn_like(inputs["hidden_states"])
    timesteps = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = pixart_epsilon_loss(model, latents, noise, timesteps, inputs["encoder_hidden_states"],
                                       inputs["encoder_attention_mask"], scheduler).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_training(args, device, dtype, overrides: dict) -> list[dict]:
    """(a) + (d): ours vs the baseline loop at each size; peak memory against the estimate."""
    rows = []
    mean_tokens = round(sum(caption_lengths(256, args.max_tokens)) / 256)  # padded to each batch's longest
    ours_tokens = max(caption_lengths(args.train_batch, args.max_tokens, seed=1))
    for size in args.sizes:
        flops = measure.transformer_flops(presets.transformer_kwargs(**overrides), 1, size, size, args.max_tokens,
                                          train=True)
        for name, tokens, fused, compiled in (("baseline", args.max_tokens, False, False),
                                              ("ours", ours_tokens, True, False),
                                              ("ours + compile", ours_tokens, True, True)):
            torch.manual_seed(0)
            model = presets.build_transformer(device=device, **overrides).train()
            if compiled:  # the trainer's dynamo_backend: inductor, regional (aot_eager in --smoke: no codegen)
                compile_transformer(model, TrainingConfig(dynamo_backend="aot_eager" if args.smoke else "inductor"),
                                    log=lambda _: None)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=fused or None)
            reset_memory(device)
            seconds = timed(train_step_fn(model, optimizer, args.train_batch, size, tokens, device, dtype), device,
                            args.warmup, args.iters)
            peak = peak_memory(device)
            params = presets.count_parameters(model)
            memory = measure.transformer_train_memory(presets.transformer_kwargs(**overrides), args.train_batch, size,
                                                      size, tokens, dtype, False)
            predicted = estimate.training_peak(params * 4, estimate.optimizer_state_bytes(params, "adamw"), 0,
                                               memory, 1, step_transient=0 if fused else params * 4)
            rows.append(dict(stage="training", what=name, size=size, batch=args.train_batch, text_tokens=tokens,
                             per_s=args.train_batch / seconds, flops=flops, peak=peak, estimate=predicted))
            del model, optimizer
    print(f"(typical caption length in the mix: {mean_tokens} tokens; ours pads this batch to {ours_tokens})")
    return rows


def bench_text_encoder(args, device, overrides: dict) -> list[dict]:
    """(b): captions/s of T5 in bf16, length-sorted batches vs padded to the limit."""
    encoder = presets.build_text_encoder(device=device, dtype=torch.bfloat16, **overrides)
    lengths = sorted(caption_lengths(args.captions, args.max_tokens), reverse=True)
    rows = []
    for name, padded in (("padded to limit", True), ("length-sorted", False)):
        def run() -> None:
            with torch.no_grad():
                for first in range(0, len(lengths), args.text_batch):
                    chunk = lengths[first:first + args.text_batch]
                    width = args.max_tokens if padded else max(chunk)
                    ids = torch.randint(2, encoder.config.vocab_size, (len(chunk), width), device=device)
                    mask = (torch.arange(width, device=device)[None] < torch.tensor(chunk, device=device)[:, None])
                    encoder(input_ids=ids, attention_mask=mask.long())

        reset_memory(device)
        seconds = timed(run, device, 1, 1)
        # FLOPs per caption: at the limit when padded, at the mean length when sorted (little padding)
        flops = measure.text_encoder_flops(presets.T5_V1_1_XXL | overrides, 1, args.max_tokens if padded
                                           else round(sum(lengths) / len(lengths)))
        predicted = presets.count_parameters(encoder) * 2 + measure.text_encoder_peak(
            presets.T5_V1_1_XXL | overrides, torch.bfloat16, args.text_batch, args.max_tokens)
        rows.append(dict(stage="text_encoder", what=name, size=None, batch=args.text_batch, text_tokens=None,
                         per_s=len(lengths) / seconds, flops=flops, peak=peak_memory(device),
                         estimate=predicted if padded else None))
    return rows


def bench_vae(args, device, overrides: dict) -> list[dict]:
    """(c): VAE encode images/s at the largest size, batch ``--vae-batch`` vs 1 (fp32, the default)."""
    vae = presets.build_vae(device=device, **overrides)
    size = max(args.sizes)
    rows = []
    for batch, nhwc in ((1, False), (args.vae_batch, False), (args.vae_batch, True)):
        if nhwc:  # vae_channels_last: NHWC weights and inputs
            vae = to_channels_last(vae)
        images = torch.randn(batch, 3, size, size, device=device)
        images = images.contiguous(memory_format=input_memory_format(vae))

        def run() -> None:
            with torch.no_grad():
                vae.encode(images).latent_dist.mean

        reset_memory(device)
        seconds = timed(run, device, args.warmup, args.iters)
        predicted = presets.count_parameters(vae) * 4 + measure.vae_encode_peak(presets.SDXL_VAE | overrides,
                                                                               torch.float32, batch, size, size)
        rows.append(dict(stage="vae_encode", what=f"batch {batch}" + (", channels_last" if nhwc else ""), size=size, batch=batch, text_tokens=None,
                         per_s=batch / seconds, peak=peak_memory(device), estimate=predicted,
                         flops=measure.vae_encode_flops(presets.SDXL_VAE | overrides, 1, size, size)))
    return rows


def table(rows: list[dict], peak_tflops: float | None) -> str:
    """Markdown: throughput, MFU and peak memory vs the estimate, one row per measurement."""
    lines = ["| stage | variant | size | batch | samples/s | TFLOP/sample | MFU | peak GiB | estimate GiB | "
             "measured / estimate |", "|" + "---|" * 10]
    for r in rows:
        mfu = f"{r['flops'] * r['per_s'] / (peak_tflops * 1e12):.1%}" if peak_tflops else "-"
        peak = "-" if r["peak"] is None else f"{r['peak'] / GIB:.2f}"
        est = "-" if r["estimate"] is None else f"{r['estimate'] / GIB:.2f}"
        ratio = f"{r['peak'] / r['estimate']:.2f}" if r["peak"] and r["estimate"] else "-"
        lines.append(f"| {r['stage']} | {r['what']} | {r['size'] or '-'} | {r['batch']} | {r['per_s']:.2f} | "
                     f"{r['flops'] / 1e12:.3g} | {mfu} | {peak} | {est} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny widths on the CPU; print only")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (for MFU)")
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke for the CPU code-path check")
    smoke = args.smoke
    args.sizes = [64, 128] if smoke else [512, 1024]
    args.max_tokens, args.captions = (64, 16) if smoke else (300, 2048)
    args.text_batch, args.vae_batch = (4, 2) if smoke else (128, 8)
    args.train_batch = args.train_batch or (2 if smoke else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    args.iters = args.iters or (2 if smoke else 10)
    if device.type == "cuda":
        apply_tf32(TrainingConfig(), device)  # the trainer's default: TF32 on (disable_tf32 false)
        name = torch.cuda.get_device_name(device)
        args.peak_tflops = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    else:
        name = f"{platform.machine()} CPU"
    started = time.perf_counter()
    rows = bench_training(args, device, torch.bfloat16, SMOKE_TRANSFORMER if smoke else {})
    rows += bench_text_encoder(args, device, SMOKE_T5 if smoke else {})
    rows += bench_vae(args, device, SMOKE_VAE if smoke else {})
    text = table(rows, args.peak_tflops)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"Device: {name}, torch {torch.__version__}; {stamp}; {time.perf_counter() - started:.0f} s; "
              f"peak {args.peak_tflops or '?'} TFLOP/s for MFU; training batch {args.train_batch}, "
              f"{args.warmup} warm-up + {args.iters} timed steps")
    print(header + "\n\n" + text)
    if not smoke:
        with open(REPO / "BENCHMARKS.md", "a") as out:
            out.write(f"\n## Real scale on one GPU (`benchmarks/gpu.py`)\n\n{header}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
