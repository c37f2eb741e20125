"""Stands in for the trainer on each "machine" of the local multi-node test: joins the process group
that torchrun's c10d rendezvous set up, gathers every rank's identity, and reports it the way the
trainer does (``Reporter.open``: only global rank 0 talks to Dagster Pipes)."""

import os

import torch.distributed as dist

from pixart_pipeline.training.report import Reporter

dist.init_process_group("gloo")
with Reporter.open() as reporter:
    me = {k: int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE")}
    me |= {"machine": int(os.environ["JOB_COMPLETION_INDEX"]), "pipes": reporter.under_pipes,
           "endpoint": os.environ["TORCHELASTIC_RUN_ID"]}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    reporter.info(f"rank {me['RANK']} of {me['WORLD_SIZE']} on machine {me['machine']}")
    if reporter.under_pipes:
        reporter.materialization({"ranks": everyone}, data_version="probe")
dist.destroy_process_group()
