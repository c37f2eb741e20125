"""A finished run is recognised by the hyperparameters its model card records, across releases that
add hyperparameters: a key the card lacks matches at its default (an upgrade never retrains)."""

from __future__ import annotations

import json
from pathlib import Path

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.training.export import CARD_INFO
from pixart_pipeline.training.loop import finished_for, train


def _edit_card(run_dir: str, edit) -> None:
    path = Path(run_dir) / CARD_INFO
    info = json.loads(path.read_text())
    edit(info["hyperparameters"])
    path.write_text(json.dumps(info))


def test_a_card_from_before_a_new_hyperparameter_still_matches_at_its_default(make_spec):
    spec = make_spec("done", max_train_steps=2)
    train(spec)
    assert finished_for(spec)

    # an older release did not know 'diff2flow_enabled'; today's spec has it at its default
    new_key = "diff2flow_enabled"
    assert getattr(spec.hyperparameters, new_key) == Hyperparameters.model_fields[new_key].default
    _edit_card(spec.run_dir, lambda hp: hp.pop(new_key))
    assert finished_for(spec)

    # a key the card lacks while today's value is not its default: not this run
    assert spec.hyperparameters.learning_rate != Hyperparameters.model_fields["learning_rate"].default
    _edit_card(spec.run_dir, lambda hp: hp.pop("learning_rate"))
    assert not finished_for(spec)


def test_a_recorded_value_that_differs_is_another_run(make_spec):
    spec = make_spec("done", max_train_steps=2)
    train(spec)
    _edit_card(spec.run_dir, lambda hp: hp.update(seed=hp["seed"] + 1))
    assert not finished_for(spec)
    _edit_card(spec.run_dir, lambda hp: hp.update(seed=hp["seed"] - 1, retired_key=1))
    assert not finished_for(spec)  # a key today's release does not have: not comparable, train
