"""Keys name exactly what determines an item; short text items equal full padding; NaN/Inf never lands."""

from __future__ import annotations

import copy

import pytest
import torch

from pixart_pipeline.cache import ShardStore, encode_captions, encode_images, pad_prompt_embeds, text_item_key
from pixart_pipeline.cache.keys import vae_item_key
from pixart_pipeline.cache.vae import VaeItem
from pixart_pipeline.data.manifest import sha256_file
from pixart_pipeline.models import load_noise_scheduler, load_text_encoder, load_tokenizer, load_transformer, load_vae
from pixart_pipeline.training.loss import pixart_epsilon_loss

CAPTIONS = [  # typical lengths differ, so one batch mixes short and long prompts
    "a red circle",
    "a small green square on a large pale yellow background next to a blue triangle",
    "",
]
MAX_LENGTH = 300  # PixArt Sigma's tokenizer_max_length


def test_text_key_covers_caption_and_encoder():
    base = text_item_key("a red circle", "enc-a")
    assert base == text_item_key("a red circle", "enc-a")
    assert base != text_item_key("a red circle ", "enc-a")  # caption text, byte for byte
    assert base != text_item_key("a red circle", "enc-b")  # encoder identity/revision/max length/dtype


def test_vae_key_covers_bytes_geometry_and_encoder():
    base = vae_item_key("ab" * 32, (160, 128), (16, 0), (128, 128), "vae-fp32")
    assert base == vae_item_key("ab" * 32, (160, 128), (16, 0), (128, 128), "vae-fp32")
    assert base != vae_item_key("cd" * 32, (160, 128), (16, 0), (128, 128), "vae-fp32")  # other pixels
    assert base != vae_item_key("ab" * 32, (160, 128), (0, 0), (128, 128), "vae-fp32")  # other crop box
    assert base != vae_item_key("ab" * 32, (160, 120), (16, 0), (128, 112), "vae-fp32")  # other target size
    assert base != vae_item_key("ab" * 32, (160, 128), (16, 0), (128, 128), "vae-bf16")  # other dtype


def test_config_changes_reach_the_encoder_ids(tmp_path):
    from demo_copy import copy_demo

    from pixart_pipeline.cache.stage import text_encoder_id, vae_encoder_id
    from pixart_pipeline.config import load_config

    base = load_config(copy_demo(tmp_path / "a"))
    assert text_encoder_id(base) == text_encoder_id(load_config(copy_demo(tmp_path / "b")))
    longer = load_config(copy_demo(tmp_path / "c", config={"tokenizer_max_length": 120}))
    bf16_text = load_config(copy_demo(tmp_path / "d", config={"text_encoder_dtype": "bf16"}))
    bf16_vae = load_config(copy_demo(tmp_path / "e", config={"vae_dtype": "bf16"}))
    assert len({text_encoder_id(c) for c in (base, longer, bf16_text)}) == 3
    assert vae_encoder_id(base) == vae_encoder_id(longer) != vae_encoder_id(bf16_vae)
    # Online encoding (vae_cache_disable) uses the same keys as the cache.
    online = load_config(copy_demo(tmp_path / "f", config={"vae_cache_disable": True}))
    assert vae_encoder_id(online) == vae_encoder_id(base)


@pytest.fixture(scope="module")
def tiny(tiny_pixart_path):
    return {
        "tokenizer": load_tokenizer(tiny_pixart_path),
        "encoder": load_text_encoder(tiny_pixart_path),
        "transformer": load_transformer(tiny_pixart_path).eval(),
        "scheduler": load_noise_scheduler(tiny_pixart_path),
        "vae": load_vae(tiny_pixart_path),
    }


def test_longest_padding_equals_max_length_padding_and_gives_the_same_loss(tmp_path, tiny):
    tokenizer, encoder = tiny["tokenizer"], tiny["encoder"]
    store = ShardStore(tmp_path / "text")
    encode_captions(store, CAPTIONS, tokenizer, encoder, MAX_LENGTH, batch_size=3, device="cpu")
    short, short_mask = pad_prompt_embeds([store.get(text_item_key(c))["prompt_embeds"] for c in CAPTIONS])

    # PixArtSigmaPipeline.encode_prompt: every prompt padded to max_length, mask passed to T5.
    full = tokenizer(CAPTIONS, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        reference = encoder(full.input_ids, attention_mask=full.attention_mask)[0]  # [3, 300, D]
    assert short.shape[1] == int(full.attention_mask.sum(1).max()) < MAX_LENGTH
    assert torch.equal(short_mask, full.attention_mask[:, : short.shape[1]])
    real = short_mask.bool()
    torch.testing.assert_close(short[real], reference[:, : short.shape[1]][real], rtol=1e-5, atol=1e-6)

    # The trainer's loss on the same latents, noise and timesteps: short padding == full padding.
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=g)
    noise = torch.randn(3, 4, 8, 8, generator=g)
    timesteps = torch.tensor([10, 500, 990])
    with torch.inference_mode():
        loss_short = pixart_epsilon_loss(
            tiny["transformer"], latents, noise, timesteps, short, short_mask, tiny["scheduler"]
        )
        loss_full = pixart_epsilon_loss(
            tiny["transformer"], latents, noise, timesteps, reference, full.attention_mask, tiny["scheduler"]
        )
    torch.testing.assert_close(loss_short, loss_full, rtol=1e-5, atol=1e-7)


def test_nan_text_embeddings_are_reported_with_their_source_and_not_written(tmp_path, tiny):
    broken = copy.deepcopy(tiny["encoder"])
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    store = ShardStore(tmp_path / "text")
    sources = {c: f"/data/img{i}.png" for i, c in enumerate(CAPTIONS)}
    stats = encode_captions(store, CAPTIONS, tiny["tokenizer"], broken, 64, 2, "cpu", sources=sources)
    assert stats.encoded == 0 and len(stats.failed) == 3
    assert {f.split(":")[0] for f, _ in stats.failed} == set(sources.values())
    assert all("NaN/Inf" in reason for _, reason in stats.failed)
    assert len(ShardStore(tmp_path / "text")) == 0


def test_nan_latents_are_reported_with_their_file_and_not_written(tmp_path, tiny):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(path)
    sha = sha256_file(path)
    item = VaeItem(vae_item_key(sha, (64, 64), (0, 0), (64, 64)), path, (64, 64), (0, 0), (64, 64), sha)
    broken = copy.deepcopy(tiny["vae"])
    with torch.no_grad():
        broken.encoder.conv_in.weight.fill_(float("inf"))
    store = ShardStore(tmp_path / "vae")
    stats = encode_images(store, [item], broken, batch_size=1, device="cpu")
    assert stats.encoded == 0 and stats.failed[0][0] == str(path) and "NaN/Inf" in stats.failed[0][1]
    assert item.key not in ShardStore(tmp_path / "vae")


def test_the_store_itself_refuses_non_finite_tensors(tmp_path):
    store = ShardStore(tmp_path / "s")
    with pytest.raises(ValueError, match="'k1' field 'mean' has NaN/Inf"):
        store.write({"k0": {"mean": torch.zeros(2)}, "k1": {"mean": torch.tensor([1.0, float("inf")])}})
    assert len(ShardStore(tmp_path / "s")) == 0 and not (tmp_path / "s" / "shards").exists()
