"""Cache speed and size against SimpleTuner-style baselines measured in the same run.

    .venv/bin/python benchmarks/caches.py [--items 256] [--images 96]

(a) encode throughput with the tiny PixArt models: ours (T5 batches sorted by token count and padded
    to their longest, VAE batches of one bucket with image decoding prefetched, items written in
    shards) vs a naive loop (one item at a time, T5 padded to 300 tokens, one ``torch.save`` file
    per item, which is what SimpleTuner does);
(b) training-read throughput: samples/s for random bucketed batches of 16 (latent posterior
    ``[4, 64, 64]`` fp32 mean+std and a ``[L, 4096]`` bf16 T5 embedding per sample), through the
    ShardStore reader (memory-mapped shards, batch padded to its longest) vs one ``torch.load`` per
    item file holding the full 300-token embedding;
(c) disk bytes per text item, ``[L, 4096]`` bf16 for captions of 20-80 tokens, vs the full 300.

Benchmarks are not tests; ``torch.load`` appears only in the baseline. Output is markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from pixart_pipeline.cache import ShardStore, VaeItem, encode_captions, encode_images, pad_prompt_embeds
from pixart_pipeline.cache.keys import vae_item_key
from pixart_pipeline.cache.vae import load_pixels
from pixart_pipeline.data.manifest import sha256_file
from pixart_pipeline.models import TINY_MODEL_NAME, load_text_encoder, load_tokenizer, load_vae, resolve_pretrained

MAX_LENGTH = 300
WORDS = ("red blue green small large circle square triangle on a the background with next to pale dark bright "
         "striped dotted shiny photo of painting under above").split()
BUCKETS = [(256, 256), (192, 320), (320, 192)]


def captions(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(14, 60))) + f" #{i}" for i in range(n)]


def make_images(folder: Path, n: int, rng: random.Random) -> list[VaeItem]:
    items = []
    for i in range(n):
        w, h = BUCKETS[i % len(BUCKETS)]
        path = folder / f"img{i}.jpg"
        Image.effect_noise((w + 64, h + 64), 40 + i % 50).convert("RGB").save(path, quality=90)
        sha = sha256_file(path)  # what the metadata records; load_pixels checks the bytes against it
        items.append(VaeItem(vae_item_key(sha, (w + 64, h + 64), (32, 32), (w, h)), path,
                             (w + 64, h + 64), (32, 32), (w, h), sha))
    return items


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_encode(tmp: Path, n_text: int, n_images: int, rng: random.Random) -> list[tuple]:
    model = resolve_pretrained(TINY_MODEL_NAME, None, tmp / "models")
    tokenizer, encoder, vae = load_tokenizer(model), load_text_encoder(model), load_vae(model)
    texts = captions(n_text, rng)
    (tmp / "img").mkdir()
    items = make_images(tmp / "img", n_images, rng)

    def naive_text() -> None:
        out = tmp / "naive_text"
        out.mkdir()
        with torch.inference_mode():
            for i, caption in enumerate(texts):
                tok = tokenizer([caption], padding="max_length", max_length=MAX_LENGTH, truncation=True,
                                return_tensors="pt")
                embeds = encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]
                torch.save({"prompt_embeds": embeds[0], "attention_mask": tok.attention_mask[0]}, out / f"{i}.pt")

    def naive_vae() -> None:
        out = tmp / "naive_vae"
        out.mkdir()
        with torch.inference_mode():
            for i, item in enumerate(items):
                posterior = vae.encode(load_pixels(item)[None]).latent_dist
                torch.save({"mean": posterior.mean[0], "std": posterior.std[0]}, out / f"{i}.pt")

    ours_text = timed(lambda: encode_captions(ShardStore(tmp / "text"), texts, tokenizer, encoder, MAX_LENGTH,
                                              batch_size=64, device="cpu"))
    base_text = timed(naive_text)
    ours_vae = timed(lambda: encode_images(ShardStore(tmp / "vae"), items, vae, batch_size=4, device="cpu"))
    base_vae = timed(naive_vae)
    return [
        ("(a) T5 encode, captions/s", n_text / base_text, n_text / ours_text),
        ("(a) VAE encode, images/s", n_images / base_vae, n_images / ours_vae),
    ]


def bench_read(tmp: Path, n: int, rng: random.Random, batches: int = 60, batch_size: int = 16) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    vae_store, text_store = ShardStore(tmp / "rvae"), ShardStore(tmp / "rtext")
    base = tmp / "rbase"
    base.mkdir()
    lengths = [rng.randint(20, 80) for _ in range(n)]
    buckets = [i % 3 for i in range(n)]
    vae_items, text_items = {}, {}
    for i in range(n):
        mean, std = torch.randn(4, 64, 64, generator=g), torch.rand(4, 64, 64, generator=g)
        embeds = torch.randn(lengths[i], 4096, generator=g).bfloat16()
        vae_items[f"v{i}"] = {"mean": mean, "std": std}
        text_items[f"t{i}"] = {"prompt_embeds": embeds}
        full = torch.zeros(MAX_LENGTH, 4096, dtype=torch.bfloat16)
        full[: lengths[i]] = embeds
        mask = torch.zeros(MAX_LENGTH, dtype=torch.long)
        mask[: lengths[i]] = 1
        torch.save({"mean": mean, "std": std}, base / f"v{i}.pt")
        torch.save({"prompt_embeds": full, "attention_mask": mask}, base / f"t{i}.pt")
        if len(vae_items) == 256 or i == n - 1:
            vae_store.write(vae_items)
            text_store.write(text_items)
            vae_items, text_items = {}, {}
    by_bucket = {b: [i for i in range(n) if buckets[i] == b] for b in range(3)}
    plan = [rng.sample(by_bucket[rng.randrange(3)], batch_size) for _ in range(batches)]

    def ours() -> None:
        reader_v, reader_t = ShardStore(vae_store.root), ShardStore(text_store.root)
        for batch in plan:
            posts = reader_v.get_many([f"v{i}" for i in batch])
            mean = torch.stack([p["mean"] for p in posts])  # [B, 4, 64, 64]
            std = torch.stack([p["std"] for p in posts])
            texts = reader_t.get_many([f"t{i}" for i in batch])
            embeds, mask = pad_prompt_embeds([t["prompt_embeds"] for t in texts])  # [B, Lmax, 4096]
            assert mean.shape[0] == std.shape[0] == embeds.shape[0] == mask.shape[0]

    def baseline() -> None:
        for batch in plan:
            posts = [torch.load(base / f"v{i}.pt", weights_only=True) for i in batch]
            mean = torch.stack([p["mean"] for p in posts])
            std = torch.stack([p["std"] for p in posts])
            texts = [torch.load(base / f"t{i}.pt", weights_only=True) for i in batch]
            embeds = torch.stack([t["prompt_embeds"] for t in texts])  # [B, 300, 4096]
            mask = torch.stack([t["attention_mask"] for t in texts])
            assert mean.shape[0] == std.shape[0] == embeds.shape[0] == mask.shape[0]

    # One intra-op thread for both sides: batch assembly is memory-bound, and on a loaded machine
    # OpenMP threads spin-waiting for a busy core made the timings swing by 10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ours(), baseline()  # warm the page cache for both: we compare reads, not the disk
    samples = batches * batch_size
    t_ours = min(timed(ours) for _ in range(5))
    t_base = min(timed(baseline) for _ in range(5))
    torch.set_num_threads(threads)

    text_bytes = text_store.stats()["bytes"] / n
    full_bytes = sum((base / f"t{i}.pt").stat().st_size for i in range(n)) / n
    return [
        ("(b) training read, samples/s", samples / t_base, samples / t_ours),
        ("(c) disk bytes per text item (20-80 tokens)", full_bytes, text_bytes),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=256, help="text items for (a) and samples stored for (b)/(c)")
    parser.add_argument("--images", type=int, default=96, help="images for (a)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_encode(Path(tmp), args.items, args.images, rng)
        rows += bench_read(Path(tmp), args.items, rng)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"Python {sys.version.split()[0]}, CUDA: {torch.cuda.is_available()}\n")
    print("| measure | baseline | ours | ratio |")
    print("|---|---|---|---|")
    for name, baseline, ours in rows:
        ratio = baseline / ours if name.startswith("(c)") else ours / baseline
        label = "x smaller" if name.startswith("(c)") else "x faster"
        print(f"| {name} | {baseline:,.1f} | {ours:,.1f} | {ratio:.1f}{label} |")


if __name__ == "__main__":
    main()
