"""The trainer across machines: the torchrun line the multi-node Job runs on each pod
(``defs/k8s/multinode.py``), here as two local "machines" with one process each (c10d rendezvous,
gloo). num_machines multiplies the world size, so 2 machines x 1 process trains exactly like one
process accumulating 2 batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixart_pipeline.defs.k8s.multinode import MultiNodeSpec, torchrun_command
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def machine_commands(spec_path: Path, machines: int, processes: int) -> list[str]:
    """The pods' command, pointed at a free local port instead of pod 0's DNS name."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = MultiNodeSpec(name="pixart-train-test", namespace="local", image="local", machines=machines,
                         processes=processes, env={},
                         trainer_args=["-m", "pixart_pipeline.training", str(spec_path)])
    command = torchrun_command(spec, port)
    command[0] = sys.executable
    return [f"--rdzv_endpoint=127.0.0.1:{port}" if c.startswith("--rdzv_endpoint=") else c for c in command]


@pytest.mark.slow
def test_two_machines_train_like_one_process_accumulating_two_batches(make_spec, tmp_path):
    spec = make_spec("nodes", max_train_steps=4, num_processes=1, num_machines=2, checkpointing_steps=4)
    path = spec.save(tmp_path / "nodes.json")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    command = machine_commands(path, machines=2, processes=1)
    procs = [subprocess.Popen(command, env=env | {"JOB_COMPLETION_INDEX": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    run = Path(spec.run_dir)
    assert json.loads((run / "result.json").read_text())["steps"] == 4

    single = train(make_spec("single", max_train_steps=4, gradient_accumulation_steps=2, checkpointing_steps=4))
    two = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    one = [r["loss"] for r in read_metrics(Path(single.run_dir) / "metrics.jsonl")]
    assert len(two) == len(one) == 4
    assert torch.allclose(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-6), (two, one)


def test_a_world_that_does_not_match_machines_times_processes_is_refused(make_spec, tmp_path):
    """Run by hand with one process, a 2-machine spec names both counts and the launch line."""
    spec = make_spec("wrong", max_train_steps=1, num_processes=1, num_machines=2)
    with pytest.raises(Exception, match=r"num_processes is 1 \(x 2 machine\(s\)\) but this run has 1 process"):
        train(spec)
