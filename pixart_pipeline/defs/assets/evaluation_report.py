"""`evaluation_report`: validation images, CLIP score and stable eval loss, base vs trained."""


import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.assets.common import (
    asset_key,
    stage_asset,
    to_materialize_result,
    upstream_metadata,
    user_errors,
)
from pixart_pipeline.defs.resources import DeviceResource
from pixart_pipeline.evaluation.stage import run_evaluation_report
from pixart_pipeline.stages import EVALUATION_REPORT, TRAINED_CHECKPOINT


def build_evaluation_report_asset(cfg: PipelineConfig) -> dg.AssetsDefinition:
    t = cfg.training

    @stage_asset(
        EVALUATION_REPORT, cfg,
        kinds={"html"},
        description=(
            f"Validation images for {len(t.all_validation_prompts)} prompt(s) x {len(t.validation_sizes)} "
            f"resolution(s) at guidance {t.validation_guidance} with fixed seeds; CLIP score "
            f"(`{t.pretrained_evaluation_model_name_or_path}`, 100*max(cos,0)); stable eval loss on the "
            "eval split at fixed timesteps and noise, for the base and the trained model; an HTML report. "
            "Evaluates the run that the latest trained_checkpoint materialization names (its `run_dir`)."
        ),
    )
    def evaluation_report(context: dg.AssetExecutionContext, device: DeviceResource) -> dg.MaterializeResult:
        run_dir = upstream_metadata(context.instance, asset_key(TRAINED_CHECKPOINT), "run_dir")
        with user_errors():
            result = run_evaluation_report(cfg, device.device, run_dir, log=context.log.info)
        return to_materialize_result(context, result)

    return evaluation_report
