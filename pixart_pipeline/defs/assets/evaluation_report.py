"""`evaluation_report`: validation images, CLIP score and stable eval loss, base vs trained."""


import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.config.fingerprints import evaluation_fields
from pixart_pipeline.defs.assets.common import (
    user_errors,
    CHECKPOINT_KEY,
    REPORT_KEY,
    TEXT_EMBED_KEY,
    metadata_key,
    vae_key,
    automation,
    stage_code_version,
    to_materialize_result,
)
from pixart_pipeline.defs.resources import DeviceResource
from pixart_pipeline.evaluation.stage import run_evaluation_report


def build_evaluation_report_asset(cfg: PipelineConfig) -> dg.AssetsDefinition:
    t = cfg.training

    @dg.asset(
        key=REPORT_KEY,
        # The eval loss reads the held-out split from the caches, which the checkpoint never sees:
        # new eval images must make the report unsynced even when the trained weights are unchanged.
        deps=[CHECKPOINT_KEY, TEXT_EMBED_KEY, *[vae_key(ds.id) for ds in cfg.datasets],
              *[metadata_key(ds.id) for ds in cfg.datasets]],
        group_name="evaluation",
        pool="gpu",
        code_version=stage_code_version("evaluation_report", evaluation_fields(cfg)),
        automation_condition=automation(),
        kinds={"html"},
        description=(
            f"Validation images for {len(t.all_validation_prompts)} prompt(s) x {len(t.validation_sizes)} "
            f"resolution(s) at guidance {t.validation_guidance} with fixed seeds; CLIP score "
            f"(`{t.pretrained_evaluation_model_name_or_path}`, 100*max(cos,0)); stable eval loss on the "
            "eval split at fixed timesteps and noise, for the base and the trained model; an HTML report."
        ),
    )
    def evaluation_report(context: dg.AssetExecutionContext, device: DeviceResource) -> dg.MaterializeResult:
        with user_errors():
            return to_materialize_result(run_evaluation_report(cfg, device.device, log=context.log.info))

    return evaluation_report
