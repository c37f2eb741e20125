"""In-training validation, as SimpleTuner users watch it: images every ``validation_steps``, the stable
eval loss every ``eval_steps_interval``, CLIP score with the images when ``evaluation_type`` is clip.

Each validation writes ``run_dir/validation/step-<step>/<p.._s.._WxH>.png`` and one row of
``run_dir/validation.jsonl`` (``step``, ``eval_loss``, ``clip_score``, ``images``), logs a line (the
Dagster run log under Pipes) and the tracker (W&B / TensorBoard). With ``validation_on_startup``
step 0 (the base weights) is validated when a run starts fresh, so the curve starts at the base model. ``watch_metadata`` turns
the log into the finished run's materialization: the eval-loss curve (table + plot) and a strip of
the first prompt's image over the steps. Main process only; nothing here changes the weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pixart_pipeline.training.metrics import MetricsLog
from pixart_pipeline.training.watch_loss import eval_loss, read_eval_set
from pixart_pipeline.training.watch_report import VALIDATION_DIR, VALIDATION_LOG
from pixart_pipeline.training.watch_spec import WatchSpec


class Watcher:
    """Decides at which steps to validate and does it; ``on_step`` is the previews' hook (see
    ``validation.OnStep``): set it to receive every denoising step's latents."""

    def __init__(self, run: Any, watch: WatchSpec, resume_step: int | None) -> None:
        settings = run.spec.settings
        self.run, self.watch = run, watch
        self.image_every = settings.validation_steps or 0
        self.loss_every = 0 if settings.eval_loss_disable or not watch.eval_items else settings.eval_steps_interval or 0
        self.batch = settings.num_eval_images
        if settings.eval_steps_interval and not settings.eval_loss_disable and not watch.eval_items:
            run.reporter.warning("eval_steps_interval is set but there are no eval images (nothing is held out of "
                                 "training and no dataset has dataset_type \"eval\"): no eval-loss curve")
        self.log = MetricsLog(run.run_dir / VALIDATION_LOG, resume_step)
        self.on_step = self._preview_hook(settings) if watch.preview_decoder else None
        self._sampler = self._eval_set = self._clip = None

    def due(self, step: int) -> tuple[bool, bool]:
        """(render images, compute the eval loss) at ``step``."""
        return (bool(self.image_every) and step % self.image_every == 0,
                bool(self.loss_every) and step % self.loss_every == 0)

    def at_start(self) -> None:
        """A fresh run with ``validation_on_startup``: validate the base weights (step 0), so the
        curve starts at the base model."""
        if self.run.spec.settings.validation_on_startup and (self.image_every or self.loss_every):
            self.validate(0, bool(self.image_every), bool(self.loss_every))

    def maybe(self, step: int) -> None:
        """Validate at ``step`` if it is due."""
        images, loss = self.due(step)
        if images or loss:
            self.validate(step, images, loss)

    def validate(self, step: int, images: bool, loss: bool) -> dict[str, Any]:
        """Render and/or score the current weights; log and record the result."""
        start = time.perf_counter()
        run, s = self.run, self.watch.settings
        transformer = run.accelerator.unwrap_model(run.transformer)
        row: dict[str, Any] = {"step": step}
        metrics: dict[str, float] = {}
        logged: list[tuple[Path, str]] = []
        with run.accelerator.autocast():
            if loss:
                value = eval_loss(transformer, self._eval_data(transformer), run.noise_scheduler, s.eval_timesteps,
                                  s.validation_seed, run.scaling_factor, self.batch, run.accelerator.device)
                if value is not None:
                    row["eval_loss"] = metrics["eval_loss"] = value
            if images:
                samples = self._sampler_for().sample(
                    transformer, s.validation_sizes, guidance=s.validation_guidance,
                    guidance_rescale=s.validation_guidance_rescale, steps=s.validation_num_inference_steps,
                    seed=s.validation_seed, on_step=self.on_step)
                folder = run.run_dir / VALIDATION_DIR / f"step-{step:06d}"
                from pixart_pipeline.training.validation import save_samples

                paths = save_samples(samples, folder)
                row["images"] = [str(p.relative_to(run.run_dir)) for p in paths]
                logged = [(p, f"{sm.prompt} (step {step})") for p, sm in zip(paths, samples)]
                if s.evaluation_type == "clip" and self.watch.clip_model:
                    from pixart_pipeline.training.validation import clip_scores

                    model, processor = self._clip_for()
                    scores = clip_scores([sm.image for sm in samples], [sm.prompt for sm in samples], model, processor)
                    row["clip_score"] = metrics["clip_score"] = sum(scores) / len(scores)
        row["seconds"] = round(time.perf_counter() - start, 3)
        self.log.append(row)
        run.tracker.log_validation(metrics, logged, step)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        where = f"; images: {', '.join(str(p) for p, _ in logged)}" if logged else ""
        run.reporter.info(f"validation at step {step}: {shown or 'images only'}{where}")
        return row

    def _preview_hook(self, settings):
        """``validation_preview``: every ``validation_preview_steps``-th denoising step of each in-training
        validation, decoded by the Tiny AutoEncoder and posted to ``webhook_config``'s targets
        (SimpleTuner's "intermediary" validation)."""
        from pixart_pipeline.config.webhooks import webhook_targets
        from pixart_pipeline.training.previews import PreviewImage, PreviewSender, load_preview_decoder

        s = self.watch.settings
        sender = PreviewSender(webhook_targets(s.webhook_config, Path(self.watch.config_dir)),
                               load_preview_decoder(self.watch.preview_decoder, self.run.accelerator.device),
                               s.validation_preview_steps, s.validation_num_inference_steps,
                               validation_type="intermediary")

        def hook(step, timestep, latents, rows):
            sender.on_step(step, timestep, latents,
                           [PreviewImage(prompt, w, h, f"p{pi:02d}_s{si:02d}") for pi, si, prompt, w, h in rows])
        return hook

    def _eval_data(self, transformer):
        if self._eval_set is None:
            self._eval_set = read_eval_set(self.watch.eval_items, self.run.spec.text_store,
                                           int(transformer.config.in_channels))
            if self._eval_set.skipped:
                self.run.reporter.warning(f"eval loss: skipped {len(self._eval_set.skipped)} item(s): "
                                          f"{self._eval_set.skipped[:3]}")
        return self._eval_set

    def _sampler_for(self):
        if self._sampler is None:
            from pixart_pipeline.training.validation import ValidationSampler

            s = self.watch.settings
            self._sampler = ValidationSampler(self.run.spec.base_model, self.run.spec.revision,
                                              s.all_validation_prompts, s.validation_negative_prompt,
                                              self.watch.max_sequence_length, self.run.accelerator.device)
        return self._sampler

    def _clip_for(self):
        if self._clip is None:
            from pixart_pipeline.models import load_clip

            model, processor = load_clip(self.watch.clip_model)
            self._clip = (model.to(self.run.accelerator.device).eval(), processor)
        return self._clip



def open_watcher(run: Any, resume_step: int | None) -> Watcher | None:
    """The run's watcher on the main process when its spec asks for one, else None."""
    settings = run.spec.settings
    if run.spec.watch is None or not (settings.validation_steps or settings.eval_steps_interval):
        return None
    if not run.accelerator.is_main_process:
        return None
    watch = WatchSpec.from_dict(run.spec.watch, f"{run.run_dir / 'run_spec.json'}: watch")
    return Watcher(run, watch, resume_step)
