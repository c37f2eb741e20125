"""EvalSpec: JSON round trip and clear errors."""

from __future__ import annotations

import pytest

from pixart_pipeline.evaluation.spec import EvalSpec


def _spec(**kw):
    base = dict(pipeline_dir="/runs/a/pipeline", base_model="/models/tiny", prompts=["a cat"],
                sizes=[(128, 128), (192, 128)], out_dir="/out", clip_model="/models/clip",
                eval_items="/data/eval.parquet", text_store="/cache/text/abc")
    base.update(kw)
    return EvalSpec(**base)


def test_json_round_trip(tmp_path):
    spec = _spec(negative_prompt="blurry", guidance=4.5, revision="main")
    assert EvalSpec.from_json(spec.to_json()) == spec
    path = tmp_path / "eval_spec.json"
    spec.to_json(path)
    assert EvalSpec.from_json(path) == spec
    assert spec.sizes == [(128, 128), (192, 128)]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(prompts=[]), "prompts is empty"),
        (dict(sizes=[(100, 128)]), "multiples of 16"),
        (dict(sizes=[(136, 136)]), "multiples of 16"),  # a multiple of 8 that crashed the transformer
        (dict(evaluation_type="fid"), "allowed: 'clip', 'none'"),
        (dict(clip_model=None), "clip_model is required"),
        (dict(eval_timesteps=0), "eval_timesteps"),
        (dict(text_store=None), "text_store is required"),
    ],
)
def test_bad_values_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        _spec(**kw)


def test_unknown_key_is_an_error():
    data = _spec().to_dict() | {"guidence": 3.0}
    with pytest.raises(ValueError, match="unknown key.*guidence"):
        EvalSpec.from_dict(data)


def test_no_clip_model_needed_when_scoring_is_off():
    assert _spec(evaluation_type="none", clip_model=None).clip_model is None
