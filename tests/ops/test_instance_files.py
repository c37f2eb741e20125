"""No misleading instance files: the instance `make` creates is read from deploy/, and `dagster dev`
started in the repository (as `make ui` does) does not warn that a dagster.yaml there is ignored."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from demo_copy import REPO, copy_demo
from pipeline_procs import pipeline_env, start
from postgres_server import free_port

WARNING = "will not be used to configure Dagster"


def test_no_instance_file_at_the_repository_root_and_both_templates_parse():
    assert not (REPO / "dagster.yaml").exists() and not (REPO / "dagster.yml").exists()
    local = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    postgres = yaml.safe_load((REPO / "deploy" / "postgres" / "dagster.yaml").read_text())
    assert local["concurrency"]["pools"]["default_limit"] == postgres["concurrency"]["pools"]["default_limit"] == 1
    assert postgres["storage"]["postgres"]["postgres_url"] == {"env": "PIXART_PG_URL"}


@pytest.mark.slow
def test_make_seeds_the_instance_and_dagster_dev_in_the_repo_does_not_warn(tmp_path):
    home = tmp_path / "home"
    made = subprocess.run(["make", "-C", str(REPO), f"DAGSTER_HOME={home}", f"{home}/dagster.yaml"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert (home / "dagster.yaml").read_text() == (REPO / "deploy" / "local" / "dagster.yaml").read_text()

    config = copy_demo(tmp_path)
    dev = start([sys.executable, "-m", "dagster", "dev", "-m", "pixart_pipeline.definitions", "-h", "127.0.0.1",
                 "-p", str(free_port())], pipeline_env(home, config), tmp_path / "dev.log", cwd=REPO)
    try:
        dev.wait_for(r"Serving dagster-webserver|Started Dagster code server|Launching Dagster services",
                     timeout=240)
        dev.wait_for(r"Serving dagster-webserver", timeout=240)
    finally:
        dev.kill_group()
    assert WARNING not in dev.text(), dev.text()[-3000:]
