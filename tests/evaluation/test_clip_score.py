"""CLIP score = 100 * max(cos(image, text), 0), per image (torchmetrics' definition)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from pixart_pipeline.evaluation.clip_score import clip_model_name, clip_score, clip_score_from_embeddings


def test_identical_embeddings_score_100():
    e = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    assert torch.allclose(clip_score_from_embeddings(e, e.clone()), torch.tensor([100.0, 100.0]))


def test_scale_does_not_matter_only_direction():
    img = torch.tensor([[3.0, 4.0]])
    txt = torch.tensor([[30.0, 40.0]])
    assert clip_score_from_embeddings(img, txt).item() == pytest.approx(100.0)


def test_negative_cosine_clamps_to_zero_and_orthogonal_is_zero():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[-1.0, 0.0], [-1.0, 0.2], [0.0, 1.0]])
    assert clip_score_from_embeddings(img, txt).tolist() == [0.0, 0.0, 0.0]


def test_hand_computed_angle():
    # cos(60 deg) = 0.5 -> 50
    img = torch.tensor([[1.0, 0.0]])
    txt = torch.tensor([[0.5, 3**0.5 / 2]])
    assert clip_score_from_embeddings(img, txt).item() == pytest.approx(50.0, abs=1e-4)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        clip_score_from_embeddings(torch.zeros(2, 3), torch.zeros(3, 3))


def test_clip_score_with_tiny_clip_matches_embedding_maths(tiny_clip_path):
    from pixart_pipeline.models import load_clip

    model, processor = load_clip(tiny_clip_path)
    images = [Image.new("RGB", (40, 40), c) for c in ("red", "blue", "white")]
    prompts = ["a red circle", "a blue square", "a white background"]
    scores = clip_score(images, prompts, model, processor, batch_size=2)
    assert scores.shape == (3,)
    assert bool(((scores >= 0) & (scores <= 100)).all())
    # Same numbers straight from CLIPModel's forward (its logits are cos * logit_scale).
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    assert torch.allclose(scores, (100 * cos).clamp(min=0), atol=1e-4)
    assert clip_model_name(model) == tiny_clip_path


def test_clip_score_rejects_count_mismatch(tiny_clip_path):
    from pixart_pipeline.models import load_clip

    model, processor = load_clip(tiny_clip_path)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        clip_score([Image.new("RGB", (8, 8))] * 2, ["x"], model, processor)
