"""The daemon's side of crash recovery (`make ui`): every 30 s, fail and free runs whose processes died.

Launches recover by themselves (defs/recovery.py), but the UI's queue may hold a new run back while a
dead run still holds the `gpu` slot, so no launch would come. This sensor, on by default, runs the
same ``recover`` in the daemon and never requests a run.
"""

import dagster as dg

from pixart_pipeline.defs import recovery


@dg.sensor(
    name="crash_recovery",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 30 seconds, marks failed each run on this host whose processes are gone (killed, OOM, "
        "reboot) and frees its pool slots, so a crash never blocks the `gpu` pool. Requests no runs."
    ),
)
def crash_recovery_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    recovered = recovery.recover(context.instance, context.log.warning)
    return dg.SkipReason(f"recovered {len(recovered)} dead run(s): {recovered}" if recovered else "no dead run")
