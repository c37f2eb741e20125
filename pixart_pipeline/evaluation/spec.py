"""EvalSpec: everything one evaluation run needs, as a pydantic model that reads and writes JSON.

The evaluation stage resolves the user's config (model names -> local folders, dataset ids -> cache
roots) into an EvalSpec; the core never reads config.json itself. The evaluation keys themselves
are the config's own ``EvaluationSettings``, embedded: their names, defaults and checks (a
validation size off the 16-px grid, an empty prompt list) are stated once, in ``config/models.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pixart_pipeline.config.models import EvaluationSettings
from pixart_pipeline.config.webhooks import WebhookTarget
from pixart_pipeline.training.spec import SpecModel


class EvalSpec(SpecModel):
    """One evaluation: sample validation images, score them, compare eval loss base vs trained.

    pipeline_dir: the exported, trained diffusers pipeline folder (``run_dir/pipeline``).
    base_model: resolved base model (a local pipeline folder or a hub id); its transformer gives the
        "base" eval loss and its ``scheduler/`` config the DDPM noise schedule.
    clip_model: resolved CLIP model (folder or hub id) of ``settings.pretrained_evaluation_model_name_or_path``;
        only used when ``evaluation_type`` is "clip".
    eval_items: the eval split's items parquet (``stages.ITEMS_SCHEMA``); None -> no eval loss.
    text_store: root of the text-embedding ShardStore holding the eval items' prompt_embeds.
    """

    pipeline_dir: str = Field(min_length=1)
    base_model: str = Field(min_length=1)
    out_dir: str = Field(min_length=1)
    settings: EvaluationSettings = EvaluationSettings()
    revision: str | None = None
    clip_model: str | None = None
    eval_items: str | None = None
    text_store: str | None = None
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    # The T5 length used for the caches, and the dtype to sample in (fp32: reproducible on the CPU;
    # bf16 halves memory on a GPU).
    max_sequence_length: int = Field(300, ge=1)
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_batch_size: int = Field(8, ge=1)
    # -- issue 15: validation previews: the webhook targets (settings.webhook_config, read) and the
    #    resolved Tiny AutoEncoder (settings.validation_preview_decoder); both only when previewing
    webhooks: list[WebhookTarget] = []
    preview_decoder: str | None = None

    @model_validator(mode="after")
    def _inputs_for_what_is_asked(self) -> "EvalSpec":
        if self.settings.evaluation_type == "clip" and not self.clip_model:
            raise ValueError("'clip_model' is required when 'settings.evaluation_type' is 'clip'")
        if self.eval_items and not self.text_store:
            raise ValueError("'text_store' is required when 'eval_items' is set")
        if self.settings.validation_preview and not (self.webhooks and self.preview_decoder):
            raise ValueError("'settings.validation_preview' needs 'webhooks' and 'preview_decoder'")
        return self

    # The settings under the names the evaluation code uses.
    @property
    def prompts(self) -> list[str]:
        return self.settings.all_validation_prompts

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return self.settings.validation_sizes

    @property
    def guidance(self) -> float:
        return self.settings.validation_guidance

    @property
    def num_inference_steps(self) -> int:
        return self.settings.validation_num_inference_steps

    @property
    def seed(self) -> int:
        return self.settings.validation_seed

    @property
    def negative_prompt(self) -> str:
        return self.settings.validation_negative_prompt

    @property
    def evaluation_type(self) -> str:
        return self.settings.evaluation_type

    @property
    def eval_timesteps(self) -> int:
        return self.settings.eval_timesteps
