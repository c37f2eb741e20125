"""EvalSpec: JSON round trip, the config's evaluation settings embedded, and clear errors."""

from __future__ import annotations

import pytest

from pixart_pipeline.config.models import EvaluationSettings, TrainingConfig
from pixart_pipeline.evaluation.spec import EvalSpec
from pixart_pipeline.training.spec import RunSpecError


def _data(**kw):
    base = dict(pipeline_dir="/runs/a/pipeline", base_model="/models/tiny", out_dir="/out", clip_model="/models/clip",
                eval_items="/data/eval.parquet", text_store="/cache/text/abc",
                settings={"validation_prompts": ["a cat"], "validation_resolution": "128x128,192x128"})
    return base | kw


def test_json_round_trip(tmp_path):
    spec = EvalSpec.from_dict(_data(revision="main", settings=_data()["settings"] | {"validation_guidance": 4.5}))
    assert EvalSpec.from_json(spec.to_json()) == spec
    path = spec.save(tmp_path / "eval_spec.json")
    assert EvalSpec.load(path) == spec
    assert spec.sizes == [(128, 128), (192, 128)] and spec.prompts == ["a cat"] and spec.guidance == 4.5


def test_the_spec_carries_the_configs_evaluation_settings():
    cfg = TrainingConfig(validation_prompt="a dog", validation_resolution="64x64", validation_seed=3, eval_timesteps=4)
    spec = EvalSpec(pipeline_dir="p", base_model="b", out_dir="o", clip_model="c", settings=cfg.evaluation_settings())
    assert spec.settings.model_dump() == {k: getattr(cfg, k) for k in EvaluationSettings.model_fields}
    assert (spec.prompts, spec.sizes, spec.seed, spec.eval_timesteps) == (["a dog"], [(64, 64)], 3, 4)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(settings={"validation_resolution": "100x128"}), "multiples of 16"),
        (dict(settings={"validation_resolution": "136x136"}), "multiples of 16"),  # a multiple of 8 that crashed
        (dict(settings={"evaluation_type": "fid"}), "'settings.evaluation_type'"),
        (dict(clip_model=None), "'clip_model' is required"),
        (dict(settings={"eval_timesteps": 0}), "'settings.eval_timesteps'"),
        (dict(text_store=None), "'text_store' is required"),
        (dict(guidence=3.0), "unknown key 'guidence'"),
        (dict(settings={"validation_guidence": 3.0}), "unknown key 'settings.validation_guidence' (did you mean "
                                                       "'validation_guidance'?)"),
    ],
)
def test_bad_values_are_named(change, message):
    with pytest.raises(RunSpecError) as err:
        EvalSpec.from_dict(_data(**change), "eval_spec.json")
    assert str(err.value).startswith("eval_spec.json: ") and message in str(err.value)


def test_no_clip_model_needed_when_scoring_is_off():
    assert EvalSpec.from_dict(_data(clip_model=None, settings={"evaluation_type": "none"})).clip_model is None
