"""``python -m pixart_pipeline.training <run_spec.json>``: train one run (see ``training/spec.py``).

Exit status 0 when the run finished (or was already finished), 2 for a bad spec or input (the message
names the file and key) or a failed Hub upload (after the run was saved), 130 when SIGTERM/SIGINT
stopped it (after a checkpoint), 1 for anything else (a bug: Python prints its traceback). Under
Dagster Pipes the error also goes back to Dagster.
"""

from __future__ import annotations

import argparse
import sys

from pixart_pipeline.errors import InputError
from pixart_pipeline.stage_result import InsufficientDataError, MissingInputError
from pixart_pipeline.training.report import Reporter
from pixart_pipeline.training.spec import RunSpec, RunSpecError

# What the user can fix (exit 2, one line); anything else is a bug and keeps its traceback (exit 1).
# InputError covers ConfigError, HubUploadError, ModelUnavailableError and the trainer's input checks.
USER_ERRORS = (InputError, RunSpecError, MissingInputError, InsufficientDataError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixart_pipeline.training", description=__doc__.splitlines()[0])
    parser.add_argument("run_spec", help="path of the run spec JSON")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="stop after this global step (with a checkpoint), without exporting")
    args = parser.parse_args(argv)  # Pipes passes its context in environment variables, not arguments
    with Reporter.open() as reporter:
        try:
            spec = RunSpec.load(args.run_spec)
            # imported after the spec is read, so a bad spec is reported without waiting for torch
            from pixart_pipeline.training.loop import train

            result = train(spec, stop_at_step=args.stop_at_step, reporter=reporter)
            if result.stopped_by == "signal":  # terminated: a checkpoint is saved; say so in the exit status
                print(f"stopped by a signal at step {result.steps}; resumable from {result.checkpoint}",
                      file=sys.stderr)
                return 130
        except USER_ERRORS as exc:  # bad spec or input: a clear message (naming file and key), no traceback
            if reporter.under_pipes:
                reporter.context.log.error(str(exc))
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Destroy torchrun's process group before the interpreter exits.

    Left alive, gloo's C++ worker threads are destroyed during interpreter teardown, which can end
    a rank that finished early (every rank but 0, which exports) in ``std::terminate`` (SIGABRT,
    "terminate called without an active exception") and fail a run that had succeeded.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
