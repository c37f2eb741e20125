"""What the trainer watches while it trains (SimpleTuner's in-training validation), as part of the run spec.

``RunSpec.watch`` is set by the trained_checkpoint stage when ``validation_steps`` or
``eval_steps_interval`` is on; the schedule itself (those two keys) is in ``RunSpec.settings``.
None of it changes the weights, so none of it is in the run folder's hash or any fingerprint.
"""

from __future__ import annotations

from pydantic import Field

from pixart_pipeline.config.models import EvaluationSettings
from pixart_pipeline.training.spec import SpecModel


class WatchSpec(SpecModel):
    """The validation prompts/sizes and the eval-loss inputs of the in-training validation.

    settings: the config's evaluation settings (prompts, sizes, guidance, guidance rescale, steps,
        seed, negative prompt, eval_timesteps, evaluation_type).
    eval_items: the eval split's items parquet (``stages.ITEMS_SCHEMA``); None: no eval loss.
    clip_model: the resolved CLIP model when ``evaluation_type`` is "clip".
    """

    settings: EvaluationSettings = EvaluationSettings()
    eval_items: str | None = None
    clip_model: str | None = None
    max_sequence_length: int = Field(300, ge=1)
