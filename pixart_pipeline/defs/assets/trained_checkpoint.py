"""`trained_checkpoint`: a full fine-tune of the PixArt transformer, exported as a pipeline folder."""


import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.config.fingerprints import trained_checkpoint_fields
from pixart_pipeline.defs.assets.common import (
    user_errors,
    CHECKPOINT_KEY,
    TEXT_EMBED_KEY,
    automation,
    metadata_key,
    stage_code_version,
    to_materialize_result,
    vae_key,
)
from pixart_pipeline.defs.resources import DeviceResource
from pixart_pipeline.training.stage import finish_training_run, prepare_training_run, push_if_needed


def build_trained_checkpoint_asset(cfg: PipelineConfig) -> dg.AssetsDefinition:
    deps = [TEXT_EMBED_KEY]
    deps += [vae_key(ds.id) for ds in cfg.datasets]
    # The trainer reads the metadata tables (buckets, splits, which caption goes with which image).
    deps += [metadata_key(ds.id) for ds in cfg.datasets]

    @dg.asset(
        key=CHECKPOINT_KEY,
        deps=deps,
        group_name="training",
        pool="gpu",
        code_version=stage_code_version("trained_checkpoint", trained_checkpoint_fields(cfg)),
        automation_condition=automation(),
        kinds={"pytorch", "diffusers"},
        description=(
            "Full fine-tune of the PixArt Sigma transformer on the cached latents and text embeddings "
            "(bucketed batches, epsilon MSE with the learned-sigma split). Runs the standalone trainer "
            "(`python -m pixart_pipeline.training`) through Dagster Pipes; an interrupted run with the same "
            "inputs resumes from its latest checkpoint. Exported as a folder that stock "
            "`PixArtSigmaPipeline.from_pretrained` loads. Data version: hash of the exported weights."
        ),
    )
    def trained_checkpoint(
        context: dg.AssetExecutionContext,
        pipes_subprocess_client: dg.PipesSubprocessClient,
        device: DeviceResource,
    ) -> dg.MaterializeResult:
        with user_errors():
            prepared = prepare_training_run(cfg, device.device)
        if prepared.complete:
            context.log.info(f"Run {prepared.run_dir} already finished with these exact inputs; reusing it.")
            with user_errors():  # an upload that failed last time is retried; training is not redone
                push_if_needed(cfg, prepared.run_dir, context.log.info)
        else:
            context.log.info(f"Training into {prepared.run_dir}: {' '.join(prepared.command)}")
            pipes_subprocess_client.run(
                command=prepared.command, context=context, env=prepared.env
            ).get_results()
        return to_materialize_result(finish_training_run(cfg, prepared))

    return trained_checkpoint
