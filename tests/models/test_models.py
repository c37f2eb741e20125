"""Tiny models build deterministically, load through from_pretrained, and stock diffusers samples them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pixart_pipeline.models import (
    ModelUnavailableError,
    build_tiny_pixart,
    load_clip,
    load_noise_scheduler,
    load_text_encoder,
    load_tokenizer,
    load_transformer,
    load_vae,
    resolve_device,
    resolve_pretrained,
)

WEIGHTS = {
    "text_encoder": "model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "transformer": "diffusion_pytorch_model.safetensors",
}


def test_tiny_pixart_layout_and_sizes(tiny_pixart_path):
    folder = Path(tiny_pixart_path)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtSigmaPipeline"
    assert set(index) >= {"tokenizer", "text_encoder", "vae", "transformer", "scheduler"}

    tokenizer = load_tokenizer(tiny_pixart_path)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a red circle on a blue background").input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids

    text_encoder = load_text_encoder(tiny_pixart_path)
    assert text_encoder.config.d_model == 32
    vae = load_vae(tiny_pixart_path)
    assert vae.config.latent_channels == 4
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    transformer = load_transformer(tiny_pixart_path)
    cfg = transformer.config
    assert (cfg.patch_size, cfg.in_channels, cfg.out_channels, cfg.sample_size, cfg.caption_channels) == (
        2, 4, 8, 16, 32,
    )
    scheduler = load_noise_scheduler(tiny_pixart_path)
    assert type(scheduler).__name__ == "DDPMScheduler"
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.prediction_type == "epsilon"


def test_tiny_build_is_deterministic(tmp_path, tiny_pixart_path):
    again = build_tiny_pixart(tmp_path / "again")
    for part, name in WEIGHTS.items():
        a = load_file(Path(tiny_pixart_path) / part / name)
        b = load_file(again / part / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{part}/{key} differs between builds"
    tok_a = (Path(tiny_pixart_path) / "tokenizer" / "tokenizer.json").read_text()
    assert tok_a == (again / "tokenizer" / "tokenizer.json").read_text()


def test_concurrent_builds_leave_one_complete_folder(tmp_path):
    target = tmp_path / "tiny"
    errors: list[BaseException] = []

    def build():
        try:
            build_tiny_pixart(target)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (target / "model_index.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"], "temp folders must be cleaned up"
    load_transformer(str(target))


def test_stock_pipeline_samples_128px(tiny_pixart_path):
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(tiny_pixart_path)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        return pipe(
            "a red circle on a blue background",
            height=128,
            width=128,
            num_inference_steps=3,
            guidance_scale=3.5,
            use_resolution_binning=False,
            clean_caption=False,
            max_sequence_length=64,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    images = sample()
    assert images.shape == (1, 128, 128, 3)
    assert np.isfinite(images).all()
    np.testing.assert_array_equal(images, sample())


def test_tiny_clip_loads_and_scores(tiny_clip_path):
    from PIL import Image

    from pixart_pipeline.evaluation.clip_score import clip_score
    from support import hand_clip_scores

    model, processor = load_clip(tiny_clip_path)
    images = [Image.new("RGB", (96, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))]
    prompts = ["a red circle", "a blue square on a green background"]
    inputs = processor(text=prompts[:1], images=images[:1], return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)  # the tiny CLIP's 32 px input
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # The score the evaluation reports equals 100 * max(cos, 0) of CLIP's own projected embeddings.
    scores = clip_score(images, prompts, model, processor).tolist()
    assert scores == pytest.approx(hand_clip_scores(tiny_clip_path, images, prompts), abs=1e-3)
    assert len(set(scores)) == 2  # each image was scored against its own prompt


def test_resolve_pretrained(tmp_path, tiny_pixart_path):
    assert resolve_pretrained(tiny_pixart_path, None, tmp_path) == tiny_pixart_path
    hub_id = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    assert resolve_pretrained(hub_id, "main", tmp_path) == hub_id
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_pretrained(str(tmp_path / "missing" / "folder"), None, tmp_path)


@pytest.mark.parametrize(
    "loader", [load_tokenizer, load_text_encoder, load_vae, load_transformer, load_noise_scheduler, load_clip]
)
def test_unreachable_hub_model_gives_clear_error(loader, monkeypatch, tmp_path):
    # An empty hub cache and offline mode: nothing can be fetched.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = "nobody-here/not-a-real-model-xyz"
    with pytest.raises(ModelUnavailableError) as info:
        loader(repo)
    message = str(info.value)
    assert repo in message and "local folder" in message and "HF_TOKEN" in message
    assert isinstance(info.value, ValueError)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # any other name is used as given
    # auto: what this machine has, in the order cuda, mps, cpu
    if torch.cuda.is_available():
        expected = "cuda"
    elif torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert resolve_device("auto") == torch.device(expected)
    # and the order itself, on whichever machine runs the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_tiny_vae_latents_are_near_deterministic_and_unit_variance(tiny_pixart_path, tmp_path):
    """As with SDXL's VAE and its 0.13025, scaled latents of real images have roughly unit variance
    and the posterior is nearly deterministic; otherwise the demo's training task would be trivial."""
    import numpy as np
    from PIL import Image

    from pixart_pipeline.data.synthetic import generate_synthetic_dataset

    paths = [p for p in generate_synthetic_dataset(tmp_path, 12, seed=0) if p.suffix == ".png" and "broken" not in p.name]
    images = []
    for path in paths:
        with Image.open(path) as image:
            if image.size != (128, 128):
                continue
            images.append(torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1))
    batch = torch.stack(images) / 127.5 - 1  # [N, 3, 128, 128] in [-1, 1]
    vae = load_vae(tiny_pixart_path)
    with torch.no_grad():
        posterior = vae.encode(batch).latent_dist
    scaled = posterior.mean * vae.config.scaling_factor
    assert 0.4 < float(scaled.std()) < 2.5
    assert float(posterior.std.max()) < 0.02


def test_tiny_clip_build_is_byte_identical(tmp_path):
    """Two builds of the tiny CLIP give the same files (the trained BPE tokenizer did not)."""
    import hashlib

    from pixart_pipeline.models.tiny import build_tiny_clip

    def digest(folder: Path) -> dict[str, str]:
        return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(folder.rglob("*")) if f.is_file()}

    first = digest(build_tiny_clip(tmp_path / "a"))
    assert first == digest(build_tiny_clip(tmp_path / "b"))
    assert "tokenizer.json" in first
