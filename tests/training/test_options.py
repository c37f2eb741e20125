"""Trainer options on the tiny model: optimizers, epochs, LR schedules, resuming another run's
checkpoint, W&B offline, push_to_hub offline, the model card, progress lines."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from support import require_wandb

from pixart_pipeline.config.models import LR_SCHEDULERS, TrainingConfig
from pixart_pipeline.training.checkpoint import load_checkpoint
from pixart_pipeline.training.export import model_card
from pixart_pipeline.training.hub import stage_for_upload
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics
from pixart_pipeline.training.optim import build_lr_scheduler, build_optimizer, fused_adamw_supported

REPO = Path(__file__).resolve().parents[2]


def _lrs(run_dir: str) -> list[float]:
    return [r["lr"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def test_adafactor_trains_resumes_exactly_and_keeps_less_state(make_spec):
    hp = dict(optimizer="adafactor", learning_rate=1e-2, max_train_steps=8)
    straight = train(make_spec("ada", checkpointing_steps=4, **hp))
    losses = [r["loss"] for r in read_metrics(Path(straight.run_dir) / "metrics.jsonl")]
    assert all(math.isfinite(v) for v in losses) and straight.completed

    spec = make_spec("ada-resumed", checkpointing_steps=4, **hp)
    train(spec, stop_at_step=4)
    assert train(spec).weights_sha256 == straight.weights_sha256

    adamw = train(make_spec("adamw", checkpointing_steps=4, max_train_steps=4))
    size = lambda run: (Path(run) / "checkpoints" / "step-4" / "optimizer.safetensors").stat().st_size  # noqa: E731
    assert size(straight.run_dir) < 0.75 * size(adamw.run_dir)  # factored second moments, no first moment

    # its moments cannot seed AdamW: resuming with another optimizer is refused
    switched = make_spec("ada-resumed", checkpointing_steps=4, max_train_steps=12, learning_rate=1e-2)
    with pytest.raises(ValueError, match="holds adafactor optimizer state but optimizer is 'adamw'"):
        train(switched)


def test_fused_adamw_is_used_where_supported_and_otherwise_an_error_or_a_logged_fallback():
    params = [torch.nn.Parameter(torch.randn(3))]
    on = TrainingConfig(fused_optimizer="on")
    assert fused_adamw_supported(params, torch.device("cpu"))[0]  # torch >= 2.4 has a CPU kernel
    assert build_optimizer(params, on, torch.device("cpu")).defaults["fused"] is True
    assert build_optimizer(params, TrainingConfig(fused_optimizer="off"), torch.device("cpu")).defaults["fused"] is False
    # a device without a fused kernel (meta tensors have no kernels at all)
    meta = [torch.nn.Parameter(torch.randn(3, device="meta"))]
    ok, why = fused_adamw_supported(meta, torch.device("meta"))
    assert not ok and "meta" in why
    with pytest.raises(ValueError, match="fused_optimizer is 'on' but fused AdamW is not available"):
        build_optimizer(meta, on, torch.device("meta"))
    logged: list[str] = []
    opt = build_optimizer(meta, TrainingConfig(fused_optimizer="auto"), torch.device("meta"), log=logged.append)
    assert not opt.defaults["fused"] and "using the unfused" in logged[0]
    with pytest.raises(ValueError, match="Adafactor has no fused kernel"):
        TrainingConfig(optimizer="adafactor", fused_optimizer="on")


def test_fused_and_unfused_runs_agree_to_float_tolerance(make_spec):
    fused = train(make_spec("fused", max_train_steps=4, fused_optimizer="on"))
    plain = train(make_spec("plain", max_train_steps=4, fused_optimizer="off"))
    name = "pipeline/transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(Path(fused.run_dir) / name)), load_file(str(Path(plain.run_dir) / name))
    # each step moves a weight by up to ~lr = 1e-3; Adam's m / sqrt(v) amplifies rounding where v is tiny.
    # (Whether they also differ bit for bit depends on the kernels, so it is not asserted.)
    assert all(torch.allclose(a[k], b[k], atol=5e-5) for k in a)
    # the flag reached the trainer's optimizer: its checkpointed param groups say fused=True / False
    for run, flag in ((fused, True), (plain, False)):
        groups = load_checkpoint(Path(run.run_dir) / "checkpoints" / "step-4").optimizer["rest"]["param_groups"]
        assert [g["fused"] for g in groups] == [flag], run.run_dir


def test_num_train_epochs_ends_the_run_when_it_comes_first(make_spec):
    # 8 items, batch 2: 4 batches per epoch, one per step
    result = train(make_spec("epochs", num_train_epochs=2, max_train_steps=100))
    assert (result.steps, result.total_steps, result.epochs, result.stopped_by) == (8, 8, 2.0, "num_train_epochs")
    rows = read_metrics(Path(result.run_dir) / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9)) and rows[-1]["epoch"] == 1  # epochs 0 and 1
    saved = json.loads((Path(result.run_dir) / "result.json").read_text())
    assert saved["epochs"] == 2.0 and saved["stopped_by"] == "num_train_epochs"
    # with gradient accumulation 2 a step takes 2 batches; 3 epochs of 3 batches (the 2-item bucket is
    # smaller than a step and dropped) allow floor(9 / 2) = 4 whole steps
    acc = train(make_spec("epochs-acc", num_train_epochs=3, gradient_accumulation_steps=2, max_train_steps=100))
    assert (acc.steps, acc.stopped_by) == (4, "num_train_epochs") and acc.epochs == pytest.approx(8 / 3)
    # max_train_steps first
    short = train(make_spec("steps-first", num_train_epochs=3, max_train_steps=5))
    assert (short.steps, short.stopped_by) == (5, "max_train_steps")


@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_every_diffusers_schedule_is_built_and_follows_its_shape(name):
    hp = TrainingConfig(learning_rate=1.0, lr_scheduler=name, lr_warmup_steps=2, lr_num_cycles=2, lr_power=2.0,
                        lr_step_rules="1:4,0.5:7,0.1")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(opt, hp, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step(), sched.step()
    if name == "constant":
        assert lrs == [1.0] * 10
    elif name == "piecewise_constant":
        assert lrs == [1.0] * 4 + [0.5] * 3 + [0.1] * 3
    else:  # every other schedule warms up linearly over lr_warmup_steps
        assert lrs[:3] == [0.0, 0.5, 1.0]
    if name in ("linear", "cosine", "polynomial"):
        assert lrs[3:] == sorted(lrs[3:], reverse=True) and lrs[-1] < 0.2
    if name == "cosine_with_restarts":  # two cycles: the rate comes back up once
        assert sum(b > a for a, b in zip(lrs[3:], lrs[4:])) == 1


def test_piecewise_constant_drives_the_logged_learning_rate(make_spec):
    run = train(make_spec("piecewise", max_train_steps=6, lr_scheduler="piecewise_constant",
                          lr_step_rules="1:2,0.5:4,0.25"))
    assert _lrs(run.run_dir) == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4]


def test_resuming_another_runs_checkpoint_uses_this_runs_learning_rate(make_spec):
    first = make_spec("source", checkpointing_steps=4, max_train_steps=8, learning_rate=1e-3)
    train(first, stop_at_step=4)
    source = Path(first.run_dir) / "checkpoints" / "step-4"
    other = make_spec("continued", max_train_steps=8, learning_rate=2e-4)
    other = other.replace(resume_from_checkpoint=str(source))
    result = train(other)
    assert result.resumed_from == str(source)
    assert _lrs(other.run_dir)[-4:] == [2e-4] * 4  # not the source's 1e-3
    assert load_checkpoint(source).global_step == 4  # the source is untouched


def test_seconds_add_up_over_a_resume(make_spec):
    """The checkpoint records the training seconds at the moment it is saved, and a resumed session
    counts on from them. Only orderings of perf_counter readings are asserted: the save itself (and
    whatever pauses the process during it -- a full garbage collection took ~240 ms in this suite, a
    slow fsync) is wall-clock, and can take longer than the four tiny steps before it (~30-70 ms), so
    the former ``before >= stopped.seconds * 0.5`` failed now and then."""
    import time

    spec = make_spec("seconds", checkpointing_steps=4, max_train_steps=8)
    metrics = Path(spec.run_dir) / "metrics.jsonl"
    stopped = train(spec, stop_at_step=4)
    before = load_checkpoint(Path(spec.run_dir) / "checkpoints" / "step-4").extra["train_seconds"]
    # read after step 4's metrics row was written, and before the session returned
    assert 0 < read_metrics(metrics)[-1]["seconds"] <= before <= stopped.seconds
    start = time.perf_counter()
    finished = train(spec)
    wall = time.perf_counter() - start
    rows = {r["step"]: r["seconds"] for r in read_metrics(metrics)}
    assert sorted(rows) == list(range(1, 9))
    # the resumed session starts from the checkpoint's seconds (not from zero) and adds only its own time
    assert before < rows[5] <= rows[8] <= finished.seconds <= before + wall
    assert json.loads((Path(spec.run_dir) / "result.json").read_text())["seconds"] == finished.seconds


def test_gradient_checkpointing_and_seed(make_spec):
    base = train(make_spec("gc-off", max_train_steps=3))
    checkpointed = make_spec("gc-on", max_train_steps=3)
    checkpointed = checkpointed.replace(gradient_checkpointing=True)
    name = "pipeline/transformer/diffusion_pytorch_model.safetensors"
    a = load_file(str(Path(base.run_dir) / name))
    b = load_file(str(Path(train(checkpointed).run_dir) / name))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # same gradients, less memory
    assert train(make_spec("seed", max_train_steps=3, seed=8)).weights_sha256 != base.weights_sha256


def test_wandb_offline_logs_every_step_without_network(make_spec, monkeypatch):
    require_wandb()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    result = train(make_spec("wandb", max_train_steps=3, report_to="wandb", tracker_project_name="tests",
                             tracker_run_name="tiny"))
    assert result.tracker_url and Path(result.tracker_url).is_dir()
    assert Path(result.tracker_url).parent == Path(result.run_dir) / "wandb"
    log = next(Path(result.tracker_url).glob("*.wandb"))
    data = log.read_bytes()
    for key in (b"train/loss", b"train/lr", b"train/grad_norm", b"train/samples_per_s"):
        assert key in data, key
    assert b"tests" in data and b"tiny" in data  # tracker_project_name, tracker_run_name
    assert json.loads((Path(result.run_dir) / "result.json").read_text())["tracker_url"] == result.tracker_url


@pytest.mark.slow
def test_push_to_hub_offline_fails_clearly_after_the_run_is_saved(make_spec, tmp_path):
    spec = make_spec("hub", max_train_steps=2, push_to_hub=True, hub_model_id="someone/tiny-pixart")
    path = spec.save(tmp_path / "run_spec.json")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_real_token", "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    done = subprocess.run([sys.executable, "-m", "pixart_pipeline.training", str(path)], capture_output=True,
                          text=True, env=env, timeout=240)
    assert done.returncode == 2
    assert "push_to_hub: cannot upload to 'someone/tiny-pixart': HF_HUB_OFFLINE is set" in done.stderr
    assert f"the trained pipeline is saved at {Path(spec.run_dir) / 'pipeline'}" in done.stderr
    saved = json.loads((Path(spec.run_dir) / "result.json").read_text())
    assert saved["completed"] and saved["hub_url"] is None  # training kept; upload not done
    assert (Path(spec.run_dir) / "pipeline" / "README.md").is_file()


def test_upload_staging_replaces_links_with_files(make_spec, tmp_path):
    run = train(make_spec("stage", max_train_steps=1))
    pipeline = Path(run.pipeline_path)
    assert (pipeline / "vae").is_symlink()  # the export links unchanged components
    staged = stage_for_upload(pipeline, tmp_path / "upload")
    assert not any(p.is_symlink() for p in staged.rglob("*"))
    assert (staged / "vae" / "config.json").read_bytes() == (pipeline / "vae" / "config.json").read_bytes()
    assert (staged / "README.md").is_file() and (staged / "transformer").is_dir()


def test_model_card_front_matter_parses_and_has_the_fields(make_spec):
    run = train(make_spec("card", max_train_steps=2, use_ema=True))
    text = (Path(run.pipeline_path) / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n", 2)[1])
    # a local base model folder and a local dataset id are not Hub ids: the Hub would reject them there
    assert "base_model" not in front and "datasets" not in front
    assert front["license"] == "openrail++" and front["library_name"] == "diffusers"
    assert "pixart-sigma" in front["tags"]
    body = text.split("---\n", 2)[2]
    assert f"`{make_spec('card').base_model}`" in body and "`shapes`" in body  # named in the body instead
    assert front["training_config"]["learning_rate"] == 1e-3 and front["training_config"]["use_ema"] is True
    assert "# PixArt Sigma fine-tune" in text and "EMA" in text

    with_eval = model_card({"base_model": "b", "hyperparameters": {}, "metrics": {"clip_score": 0.31},
                            "samples": [{"prompt": "a red circle", "path": "samples/0.png"}]})
    front = yaml.safe_load(with_eval.split("---\n", 2)[1])
    assert front["widget"] == [{"text": "a red circle", "output": {"url": "samples/0.png"}}]
    metric = front["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "clip_score" and metric["value"] == pytest.approx(0.31)
    assert "![a red circle](samples/0.png)" in with_eval


def test_progress_line_every_n_steps(make_spec, capsys):
    from pixart_pipeline.training.report import Reporter

    spec = make_spec("progress", max_train_steps=10)  # log_every_steps 5
    train(spec, reporter=Reporter())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/10", "5/10", "10/10"]
    assert all(" loss " in line and " lr " in line and "samples/s" in line and "ETA" in line for line in lines)


def test_evaluation_results_go_into_the_model_card(make_spec, tmp_path):
    from PIL import Image

    from pixart_pipeline.training.export import refresh_model_card

    run = train(make_spec("card-eval", max_train_steps=1))
    image = tmp_path / "sample.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(image)
    card_path = refresh_model_card(Path(run.run_dir), {"clip_score": 0.25, "eval_loss_delta": float("nan")},
                                   [("a red circle", image)])
    text = card_path.read_text()
    front = yaml.safe_load(text.split("---\n", 2)[1])
    assert front["widget"][0] == {"text": "a red circle", "output": {"url": "samples/00.png"}}
    assert [m["type"] for m in front["model-index"][0]["results"][0]["metrics"]] == ["clip_score"]  # NaN left out
    assert (Path(run.pipeline_path) / "samples" / "00.png").read_bytes() == image.read_bytes()
    assert front["training_config"]["max_train_steps"] == 1  # the rest of the card is kept
    assert "](pipeline/samples/00.png)" in (Path(run.run_dir) / "README.md").read_text()


def test_resuming_an_earlier_checkpoint_sets_the_later_ones_aside(make_spec):
    spec = make_spec("branch", checkpointing_steps=2, max_train_steps=8)
    train(spec, stop_at_step=8)
    run = Path(spec.run_dir)
    earlier = spec.replace(resume_from_checkpoint=str(run / "checkpoints" / "step-4"))
    train(earlier, stop_at_step=6)
    # step-6 is the new branch's; the old step-6 and step-8 are kept aside, never picked as latest
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-2", "step-4", "step-6"]
    assert sorted(p.name for p in (run / "abandoned_checkpoints").iterdir()) == ["step-6", "step-8"]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 7))
    resumed = train(spec)  # latest: the new branch's step-6
    assert resumed.resumed_from.endswith("checkpoints/step-6") and resumed.steps == 8


def test_this_runs_adam_settings_apply_after_loading_another_state():
    from pixart_pipeline.training.optim import apply_hyperparameters

    params = [torch.nn.Parameter(torch.randn(3))]
    old = TrainingConfig(learning_rate=1e-3, adam_beta1=0.8, adam_beta2=0.9, adam_weight_decay=0.1,
                         adam_epsilon=1e-6, lr_scheduler="constant_with_warmup", lr_warmup_steps=4)
    new = TrainingConfig(learning_rate=2e-4, adam_beta1=0.95, adam_beta2=0.98, adam_weight_decay=0.0,
                         adam_epsilon=1e-7, lr_scheduler="constant_with_warmup", lr_warmup_steps=4)
    opt_a = build_optimizer(params, old, torch.device("cpu"))
    sched_a = build_lr_scheduler(opt_a, old, 10)
    params[0].grad = torch.ones(3)
    opt_a.step(), sched_a.step(), sched_a.step()  # two schedule steps into the warm-up
    opt_b = build_optimizer(params, new, torch.device("cpu"))
    sched_b = build_lr_scheduler(opt_b, new, 10)
    opt_b.load_state_dict(opt_a.state_dict())
    sched_b.load_state_dict(sched_a.state_dict())
    assert opt_b.param_groups[0]["betas"] == (0.8, 0.9)  # what load_state_dict alone leaves
    apply_hyperparameters(opt_b, sched_b, new)
    group = opt_b.param_groups[0]
    assert (group["betas"], group["weight_decay"], group["eps"]) == ((0.95, 0.98), 0.0, 1e-7)
    assert group["lr"] == pytest.approx(2e-4 * 2 / 4) and sched_b.get_last_lr() == [group["lr"]]  # warm-up kept


def test_max_grad_norm_clips_and_zero_disables_it(make_spec):
    clipped = train(make_spec("clip", max_train_steps=3, max_grad_norm=1e-3))
    free = train(make_spec("noclip", max_train_steps=3, max_grad_norm=0.0))
    norms = [r["grad_norm"] for r in read_metrics(Path(free.run_dir) / "metrics.jsonl")]
    assert all(n > 1e-3 for n in norms)  # the logged norm is before clipping
    assert [r["grad_norm"] for r in read_metrics(Path(clipped.run_dir) / "metrics.jsonl")][0] == norms[0]
    assert clipped.weights_sha256 != free.weights_sha256


def test_changing_gradient_accumulation_steps_then_resuming_is_refused(make_spec):
    spec = make_spec("gas", checkpointing_steps=2, max_train_steps=4, gradient_accumulation_steps=2)
    train(spec, stop_at_step=2)
    saved = load_checkpoint(Path(spec.run_dir) / "checkpoints" / "step-2")
    assert saved.extra["gradient_accumulation_steps"] == 2
    changed = spec.replace(gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match="written with gradient_accumulation_steps 2 but this run has 1"):
        train(changed)
    assert train(spec).steps == 4  # the same value resumes


def test_model_card_front_matter_names_only_hub_ids(tmp_path):
    hub = model_card({"base_model": "PixArt-alpha/PixArt-Sigma-XL-2-512-MS", "datasets": ["shapes", "pets"],
                      "hub_datasets": ["someone/pets"], "hyperparameters": {}})
    front = yaml.safe_load(hub.split("---\n", 2)[1])
    assert front["base_model"] == "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"
    assert front["datasets"] == ["someone/pets"]  # not the local ids
    assert "`shapes`, `pets` (from the Hub: `someone/pets`)" in hub

    local = tmp_path / "org" / "model"
    local.mkdir(parents=True)
    for base in ("tiny-random", str(local), "org/model/sub", "not a repo/x y"):
        card = model_card({"base_model": base, "datasets": ["shapes"], "hyperparameters": {}})
        front = yaml.safe_load(card.split("---\n", 2)[1])
        assert "base_model" not in front and "datasets" not in front, base
        assert f"`{base}`" in card and "`shapes`" in card
    # an org/name that exists as a folder relative to the working directory is a local path, not a Hub id
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert "base_model" not in yaml.safe_load(model_card({"base_model": "org/model"}).split("---\n", 2)[1])
    finally:
        os.chdir(cwd)


def test_total_limit_one_keeps_exactly_one_once_a_resumed_run_has_saved_a_newer_one(make_spec):
    spec = make_spec("limit-one", checkpointing_steps=2, max_train_steps=6)
    spec = spec.replace(checkpoints_total_limit=1)
    root = Path(spec.run_dir) / "checkpoints"
    train(spec, stop_at_step=4)
    assert sorted(p.name for p in root.iterdir()) == ["step-4"]
    finished = train(spec)  # resumes from step-4, saves step-6
    assert finished.resumed_from == str(root / "step-4")
    assert sorted(p.name for p in root.iterdir()) == ["step-6"]  # the resume source went once step-6 was complete
