"""``vae_cache_disable`` trains the same model as the VAE cache: a run that encodes every batch on the
fly (``OnlineVaeStore``) against a run that reads the cached posteriors, same config otherwise."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from demo_copy import copy_demo, edit_json, run_stages_before_training
from pixart_pipeline.cache.stage import run_vae_cache
from pixart_pipeline.config import load_config
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics
from pixart_pipeline.training.spec import RunSpec
from pixart_pipeline.training.stage import prepare_training_run

EXPORTED = "pipeline/transformer/diffusion_pytorch_model.safetensors"


def test_a_vae_cache_disable_run_trains_bit_identical_weights_to_the_cached_run(tmp_path):
    path = copy_demo(tmp_path, dataset={"synthetic_num_images": 8},
                     config={"max_train_steps": 4, "checkpointing_steps": 100, "train_batch_size": 2,
                             "lr_warmup_steps": 0})
    cfg = load_config(path)
    ds = cfg.datasets[0]
    run_stages_before_training(cfg)
    cached = train(RunSpec.load(prepare_training_run(cfg, "cpu").spec_path))

    edit_json(path, {"vae_cache_disable": True})
    online_cfg = load_config(path)
    run_vae_cache(online_cfg, ds, "cpu")
    prepared = prepare_training_run(online_cfg, "cpu")
    assert prepared.run_dir != Path(cached.run_dir)  # its items name the online store
    online = train(RunSpec.load(prepared.spec_path))

    # The cache stores the float32 posterior the online store computes from the same pixels, and every
    # random draw is keyed by (seed, batch): the strongest statement holds, bit-identical weights.
    assert online.weights_sha256 == cached.weights_sha256
    a, b = load_file(str(Path(cached.run_dir) / EXPORTED)), load_file(str(Path(online.run_dir) / EXPORTED))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda run: [r["loss"] for r in read_metrics(Path(run.run_dir) / "metrics.jsonl")]  # noqa: E731
    assert losses(online) == losses(cached) and len(losses(cached)) == 4

    # the model card of a Dagster-prepared run: tiny-random and a local dataset are not Hub ids
    spec = RunSpec.load(prepared.spec_path)
    assert (spec.base_model_name, spec.hub_datasets) == ("tiny-random", {})
    card = (Path(online.run_dir) / "pipeline" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n", 2)[1])
    assert "base_model" not in front and "datasets" not in front
    assert "`tiny-random`" in card and f"`{ds.id}`" in card
