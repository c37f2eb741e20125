"""Standalone PixArt Sigma trainer: ``python -m pixart_pipeline.training run_spec.json``.

Imports stay light here (no torch/diffusers at package import); use the submodules:
``spec.RunSpec``, ``loop.train``, ``sampler.BucketBatchSampler``, ``loss.pixart_epsilon_loss``,
``checkpoint.latest_checkpoint``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixart_pipeline.training.loop import TrainResult, train
    from pixart_pipeline.training.spec import RunSpec

__all__ = ["RunSpec", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from pixart_pipeline.training import loop

        return getattr(loop, name)
    if name == "RunSpec":
        from pixart_pipeline.training.spec import RunSpec

        return RunSpec
    raise AttributeError(name)
