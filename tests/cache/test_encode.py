"""Text and VAE encoding into the store, with the tiny PixArt Sigma model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_pipeline.cache import (
    ShardStore,
    VaeItem,
    encode_captions,
    encode_images,
    pad_prompt_embeds,
    text_item_key,
    vae_item_key,
)
from pixart_pipeline.data.manifest import sha256_file
from pixart_pipeline.models import load_text_encoder, load_tokenizer, load_vae

CAPTIONS = [
    "a red circle on a blue background",
    "a green square",
    "",
    "a very large purple hexagon on a pale yellow background with a small black star",
    "a green square",  # duplicate
]
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def t5(tiny_pixart_path):
    return load_tokenizer(tiny_pixart_path), load_text_encoder(tiny_pixart_path)


@pytest.fixture(scope="module")
def vae(tiny_pixart_path):
    return load_vae(tiny_pixart_path)


def test_text_embeds_hold_real_tokens_and_match_full_padding(tmp_path, t5):
    tokenizer, encoder = t5
    store = ShardStore(tmp_path / "text")
    stats = encode_captions(store, CAPTIONS, tokenizer, encoder, MAX_LENGTH, batch_size=2, device="cpu")
    assert (stats.encoded, stats.reused, stats.failed) == (4, 0, [])
    unique = list(dict.fromkeys(CAPTIONS))
    stored = store.get_many([text_item_key(c) for c in unique])

    # What PixArtSigmaPipeline.encode_prompt does: pad every prompt to max_length, pass the mask.
    full = tokenizer(unique, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        reference = encoder(full.input_ids, attention_mask=full.attention_mask)[0]  # [B, 64, 32]
    embeds, mask = pad_prompt_embeds([s["prompt_embeds"] for s in stored])
    for i, item in enumerate(stored):
        length = int(full.attention_mask[i].sum())
        assert item["prompt_embeds"].shape == (length, 32)
        assert int(mask[i].sum()) == length
    assert stored[unique.index("")]["prompt_embeds"].shape == (1, 32)  # just </s>
    # At every real (masked-in) position the short padding equals the full max-length padding.
    real = mask.bool()
    torch.testing.assert_close(embeds[real], reference[:, : embeds.shape[1]][real], rtol=1e-5, atol=1e-5)


def test_second_encode_reuses_everything(tmp_path, t5):
    tokenizer, encoder = t5
    store = ShardStore(tmp_path / "text")
    encode_captions(store, CAPTIONS[:2], tokenizer, encoder, MAX_LENGTH, batch_size=8, device="cpu")
    again = encode_captions(
        ShardStore(tmp_path / "text"), CAPTIONS, tokenizer, encoder, MAX_LENGTH, batch_size=8, device="cpu"
    )
    assert (again.encoded, again.reused) == (2, 2)
    third = encode_captions(
        ShardStore(tmp_path / "text"), CAPTIONS, tokenizer, encoder, MAX_LENGTH, batch_size=8, device="cpu"
    )
    assert (third.encoded, third.reused, third.failed) == (0, 4, [])
    assert ShardStore(tmp_path / "text").stats()["shards"] == 2


def test_long_captions_are_truncated_to_max_length(tmp_path, t5):
    tokenizer, encoder = t5
    store = ShardStore(tmp_path / "text")
    caption = " ".join(["red circle"] * 100)
    encode_captions(store, [caption], tokenizer, encoder, max_length=16, batch_size=1, device="cpu")
    assert store.get(text_item_key(caption))["prompt_embeds"].shape == (16, 32)


def _image(path, size, colour):
    Image.new("RGB", size, colour).save(path)
    return path


def _sha(path):
    return sha256_file(path) if path.exists() else "0" * 64


def _item(path, intermediary, crop, target):
    sha = _sha(path)
    return VaeItem(vae_item_key(sha, intermediary, crop, target), path, intermediary, crop, target, sha)


def test_vae_encoding_shapes_and_bad_images(tmp_path, vae):
    a = _image(tmp_path / "a.png", (200, 150), (255, 0, 0))
    b = _image(tmp_path / "b.jpg", (64, 96), (0, 0, 255))
    c = _image(tmp_path / "c.png", (128, 128), (0, 255, 0))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    items = [
        _item(a, (160, 120), (16, 4), (128, 112)),
        _item(b, (64, 96), (0, 0), (64, 96)),
        _item(c, (128, 128), (0, 0), (128, 112)),
        _item(corrupt, (64, 64), (0, 0), (64, 64)),
        _item(c, (128, 128), (0, 0), (64, 64)),  # crop box fine, ...
        _item(a, (100, 75), (0, 0), (128, 128)),  # ...crop box outside the image
    ]
    store = ShardStore(tmp_path / "vae")
    stats = encode_images(store, items, vae, batch_size=2, device="cpu")
    assert stats.encoded == 4 and stats.reused == 0
    failed = dict(stats.failed)
    assert set(failed) == {str(corrupt), str(a)}
    assert "outside" in failed[str(a)]
    for item in items[:3] + items[4:5]:
        got = store.get(item.key)
        w, h = item.target
        assert got["mean"].shape == got["std"].shape == (4, h // 8, w // 8)
        assert torch.isfinite(got["mean"]).all() and (got["std"] > 0).all()
    assert items[3].key not in store and items[5].key not in store

    # Same encoding as calling the VAE directly on the cropped pixels; and a rerun reuses all.
    from pixart_pipeline.cache import load_pixels

    with torch.inference_mode():
        direct = vae.encode(load_pixels(items[1])[None]).latent_dist
    torch.testing.assert_close(store.get(items[1].key)["mean"], direct.mean[0], rtol=1e-4, atol=1e-5)
    again = encode_images(ShardStore(tmp_path / "vae"), items, vae, batch_size=2, device="cpu")
    assert (again.encoded, again.reused, len(again.failed)) == (0, 4, 2)


def test_load_pixels_applies_exif_orientation(tmp_path):
    from pixart_pipeline.cache import load_pixels

    # Stored 64 wide x 32 high, left half white; EXIF orientation 6 = display rotated 90 degrees clockwise.
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    pixels = load_pixels(VaeItem("k", path, (32, 64), (0, 0), (32, 64), _sha(path)))
    assert pixels.shape == (3, 64, 32)  # displayed portrait size
    assert pixels.min() >= -1 and pixels.max() <= 1
    # After the rotation the white half is on top.
    assert pixels[:, :24].mean() > 0.8 and pixels[:, 40:].mean() < -0.8


def test_load_pixels_composites_alpha_on_white_and_scales_16_bit(tmp_path):
    """The VAE sees what the metadata's ``note`` says: transparent -> white, 16-bit -> 8-bit range."""
    from pixart_pipeline.cache import load_pixels

    clear = tmp_path / "clear.png"
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(clear)  # fully transparent black
    pixels = load_pixels(VaeItem("a", clear, (32, 32), (0, 0), (32, 32), _sha(clear)))
    assert torch.allclose(pixels, torch.ones_like(pixels))  # white, not the hidden black

    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16)).save(deep)  # 32896 / 257 = 128
    pixels = load_pixels(VaeItem("b", deep, (32, 32), (0, 0), (32, 32), _sha(deep)))
    torch.testing.assert_close(pixels, torch.full_like(pixels, 128 / 127.5 - 1.0))
