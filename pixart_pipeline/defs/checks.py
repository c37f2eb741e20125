"""Asset checks: the things a user wants to know before spending GPU hours."""


import dagster as dg

from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.data.stage import batch_readiness
from pixart_pipeline.defs.assets.common import asset_key, upstream_metadata
from pixart_pipeline.evaluation.stage import read_report_metrics
from pixart_pipeline.stages import BUCKETED_METADATA, EVALUATION_REPORT, TRAINED_CHECKPOINT
from pixart_pipeline.training.result import TrainResult

CHECKPOINT_KEY = asset_key(TRAINED_CHECKPOINT)
REPORT_KEY = asset_key(EVALUATION_REPORT)


def build_dataset_checks(cfg: PipelineConfig, ds: ImageDataset) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=asset_key(BUCKETED_METADATA, ds.id),
        name="enough_images_for_a_batch",
        blocking=True,
        description=(
            "Usable training images (status ok, train split, in a bucket that can fill a batch) must be at "
            "least train_batch_size x gradient_accumulation_steps x num_processes. Blocks training if not."
        ),
    )
    def enough_images_for_a_batch() -> dg.AssetCheckResult:
        report = batch_readiness(cfg, ds)
        return dg.AssetCheckResult(
            passed=report.enough,
            severity=dg.AssetCheckSeverity.ERROR,
            description=report.message,
            metadata={"usable_images": report.usable, "needed": report.needed},
        )

    @dg.asset_check(
        asset=asset_key(BUCKETED_METADATA, ds.id),
        name="buckets_fill_a_batch",
        description=(
            "Buckets with fewer train draws per epoch than one optimizer step (train_batch_size x "
            "gradient_accumulation_steps x num_processes) are dropped by the sampler, as SimpleTuner does, "
            "or repeated with small_bucket_rule 'repeat'. Names each bucket and what to change."
        ),
    )
    def buckets_fill_a_batch() -> dg.AssetCheckResult:
        report = batch_readiness(cfg, ds)
        return dg.AssetCheckResult(
            passed=not report.small_buckets,
            severity=dg.AssetCheckSeverity.WARN,
            description=report.bucket_message,
            metadata={
                "small_buckets": report.small_buckets,
                "draws_per_step": report.needed,
                "small_bucket_rule": report.rule,
            },
        )

    return [enough_images_for_a_batch, buckets_fill_a_batch]


@dg.asset_check(asset=CHECKPOINT_KEY, description="The final training loss is a finite number.")
def loss_is_finite(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    result = TrainResult.load(upstream_metadata(context.instance, CHECKPOINT_KEY, "run_dir"))
    loss = float("nan") if result.final_loss is None else float(result.final_loss)
    return dg.AssetCheckResult(passed=loss == loss and abs(loss) != float("inf"), metadata={"final_loss": loss})


@dg.asset_check(
    asset=REPORT_KEY,
    description="The trained model's stable eval loss is below the base model's (a warning, not an error).",
)
def trained_beats_base(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    metrics = read_report_metrics(upstream_metadata(context.instance, REPORT_KEY, "path"))
    base, trained = metrics.get("eval_loss_base"), metrics.get("eval_loss_trained")
    passed = base is not None and trained is not None and trained < base
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"eval loss: base {base}, trained {trained}",
        metadata={"eval_loss_base": float(base or 0.0), "eval_loss_trained": float(trained or 0.0)},
    )


def build_checks(cfg: PipelineConfig) -> list[dg.AssetChecksDefinition]:
    checks: list[dg.AssetChecksDefinition] = []
    for ds in cfg.datasets:
        if ds.dataset_type != "eval":  # an eval-only dataset has no train split to fill batches
            checks += build_dataset_checks(cfg, ds)
    return checks + [loss_is_finite, trained_beats_base]
