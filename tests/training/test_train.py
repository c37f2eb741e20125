"""End-to-end training on the tiny model: loss goes down, the export loads with stock diffusers,
a resumed run is bit-identical to an uninterrupted one, and bad setups fail clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from diffusers import PixArtSigmaPipeline
from safetensors.torch import load_file

from pixart_pipeline.fileio import tensors_sha256
from pixart_pipeline.models import load_transformer
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _exported_weights(run_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_tiny_run_learns_and_exports_a_stock_loadable_pipeline(make_spec, tiny_pixart_path):
    spec = make_spec("e2e")
    result = train(spec)
    run = Path(spec.run_dir)

    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert set(rows[0]) >= {"step", "loss", "lr", "grad_norm", "samples_per_s", "epoch"}
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert rows[-1]["epoch"] == 4  # 4 batches per epoch (6 square + 2 landscape items, batch 2)

    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-10", "step-20"]
    saved = json.loads((run / "result.json").read_text())
    assert saved["steps"] == 20 and saved["completed"] and saved["final_loss"] == rows[-1]["loss"]
    assert "tiny-random" in (run / "README.md").read_text() or spec.base_model in (run / "README.md").read_text()

    pipe = PixArtSigmaPipeline.from_pretrained(run / "pipeline")
    trained = pipe.transformer.state_dict()
    assert tensors_sha256(trained) == result.weights_sha256 == saved["weights_sha256"]
    assert tensors_sha256(load_transformer(tiny_pixart_path).state_dict()) != result.weights_sha256
    image = pipe("a red circle", height=128, width=128, num_inference_steps=2, use_resolution_binning=False,
                 clean_caption=False, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 128, 128, 3)


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(make_spec):
    # (gradient accumulation + a real SIGKILL are covered by the slow test in test_pipes_and_crash.py)
    hp = dict(use_ema=True, ema_decay=0.9, caption_dropout_probability=0.3,
              noise_offset=0.05, snr_gamma=5.0, lr_scheduler="cosine", lr_warmup_steps=3)
    straight = train(make_spec("straight", **hp))

    spec = make_spec("resumed", **hp)
    stopped = train(spec, stop_at_step=10)
    assert not stopped.completed and stopped.steps == 10 and not (Path(spec.run_dir) / "pipeline").exists()
    resumed = train(spec)
    assert resumed.resumed_from.endswith("step-10") and resumed.steps == 20

    assert resumed.weights_sha256 == straight.weights_sha256
    a, b = _exported_weights(straight.run_dir), _exported_weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [r["loss"] for r in read_metrics(Path(straight.run_dir) / "metrics.jsonl")]
    assert losses == [r["loss"] for r in read_metrics(Path(spec.run_dir) / "metrics.jsonl")]


def test_bitfit_changes_only_biases_and_limit_prunes_checkpoints(make_spec, tiny_pixart_path):
    spec = make_spec("bitfit", checkpointing_steps=2, use_bitfit=True, max_train_steps=6)
    spec = spec.replace(checkpoints_total_limit=1)
    train(spec)
    base = load_transformer(tiny_pixart_path).state_dict()
    trained = _exported_weights(spec.run_dir)
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    assert changed and all(k.endswith(".bias") for k in changed)
    assert [p.name for p in (Path(spec.run_dir) / "checkpoints").iterdir()] == ["step-6"]


def test_bf16_runs_on_cpu_and_fp16_is_refused(make_spec):
    assert train(make_spec("bf16", mixed_precision="bf16", max_train_steps=2)).completed
    with pytest.raises(ValueError, match="mixed_precision 'fp16' needs a GPU"):
        train(make_spec("fp16", mixed_precision="fp16"))


def test_missing_cache_items_fail_before_training(make_spec, caches, tmp_path):
    table = pq.read_table(caches["items"])
    keys = table.column("vae_key").to_pylist()
    keys[3] = "not-encoded"
    items = tmp_path / "items.parquet"
    pq.write_table(table.set_column(1, "vae_key", [keys]), items)
    spec = make_spec("missing").replace(items=str(items))
    with pytest.raises(ValueError, match=r"1 VAE item key\(s\) are not in the VAE cache .*'not-encoded'"):
        train(spec)
    assert not (Path(spec.run_dir) / "checkpoints").exists()


def _cli(spec_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    return subprocess.run([sys.executable, "-m", "pixart_pipeline.training", str(spec_path), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_runs_a_spec_and_reports_bad_specs(make_spec, tmp_path):
    spec = make_spec("cli", max_train_steps=4, checkpointing_steps=2)
    path = spec.save(tmp_path / "run_spec.json")
    done = _cli(path)
    assert done.returncode == 0, done.stderr
    assert "step 4/4 loss" in done.stdout and "saved checkpoint" in done.stdout
    assert json.loads((Path(spec.run_dir) / "result.json").read_text())["steps"] == 4

    path.write_text(json.dumps(spec.to_dict() | {"hyperparameters": {"learnig_rate": 1.0}}))
    bad = _cli(path)
    assert bad.returncode == 2
    assert "run_spec.json: unknown key 'hyperparameters.learnig_rate' (did you mean 'learning_rate'?)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(make_spec):
    """Bit rot in the newest checkpoint must not block the resume: the one before it is used, and the
    run still ends bit-identical to an uninterrupted one (the lost steps are simply redone)."""
    straight = train(make_spec("straight-5", checkpointing_steps=5))
    spec = make_spec("damaged", checkpointing_steps=5)
    train(spec, stop_at_step=10)
    weights = Path(spec.run_dir) / "checkpoints" / "step-10" / "transformer.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit: the recorded sha256 no longer matches
    weights.write_bytes(bytes(data))

    resumed = train(spec)
    assert resumed.resumed_from.endswith("step-5")
    assert resumed.weights_sha256 == straight.weights_sha256
