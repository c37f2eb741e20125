"""The Dagster UI, driven in headless Chromium as a user would, over a synced demo instance.

One `dagster dev` over a tiny copy of the demo (synced first by `pixart-pipeline sync` into the same
DAGSTER_HOME); the scenarios run in file order and share it. Screenshots of every page go to the
test's output folder (printed at the end); with PIXART_UI_SCREENSHOTS=<folder> the README's few are
also written there, shrunk (how docs/ui/*.png were made).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from browser_support import DagsterDev, cli, ensure_chromium
from demo_copy import copy_demo, edit_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

GROUPS = {"data": 3, "caches": 2, "training": 1, "evaluation": 1}  # asset nodes per group
ASSETS = ["raw_dataset / shapes", "captions / shapes", "bucketed_metadata / shapes", "vae_cache / shapes",
          "text_embed_cache", "trained_checkpoint", "evaluation_report"]
RUN_TIMEOUT_MS = 600_000  # a run on a shared 2-core machine: start-up dominates, training is seconds
TRAINER_PROGRESS = re.compile(r"step \d+/\d+ loss [\d.]+")
README_SHOTS = {"lineage", "bucketed_metadata", "materialize_unsynced", "checkpoint_run", "sync_run"}


class UI:
    """The browser page, the instance's env and where screenshots go."""

    def __init__(self, page, dev: DagsterDev, env: dict, config: Path, shots: Path):
        self.page, self.dev, self.env, self.config, self.shots = page, dev, env, config, shots

    def goto(self, path: str) -> None:
        self.page.goto(self.dev.url + path)

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        folder = os.environ.get("PIXART_UI_SCREENSHOTS")
        if folder and name in README_SHOTS:
            with Image.open(path) as im:  # half size, 64 colours: a few tens of KB for the README
                im = im.convert("RGB").resize((im.width * 2 // 3, im.height * 2 // 3), Image.LANCZOS)
                im.quantize(64).save(Path(folder) / f"{name}.png", optimize=True)

    def plan(self) -> str:
        return cli(self.env, "plan", "--config", str(self.config))

    def edit_learning_rate(self, value: float) -> None:
        edit_json(self.config, {"learning_rate": value})

    def reload_definitions(self) -> None:
        self.page.get_by_role("button", name="Reload definitions").click()
        self.page.get_by_text("Definitions reloaded").wait_for()

    def wait_for_run(self) -> None:
        """On a run's page: until it ends; it must have succeeded."""
        page = self.page
        page.get_by_text("RUN_SUCCESS").or_(page.get_by_text("RUN_FAILURE")).first.wait_for(timeout=RUN_TIMEOUT_MS)
        assert page.get_by_text("RUN_FAILURE").count() == 0, f"run failed: {page.url}"

    def filter_log(self, text: str) -> None:
        self.page.get_by_placeholder("Filter…").fill(text)

    def markdown_images(self, key: str) -> list[tuple[str, int]]:
        """Open the markdown metadata entry ``key`` of the asset page shown; its images' (alt, naturalWidth)."""
        page = self.page
        row = page.locator("tr", has=page.get_by_text(key, exact=True))
        row.get_by_text("[Show Markdown]").click()
        dialog = page.locator("[role=dialog][aria-modal=true]")
        dialog.locator("img").first.wait_for()
        # Wait until every image has decoded (or failed: complete with naturalWidth 0).
        page.wait_for_function("d => Array.from(d.querySelectorAll('img')).every(i => i.complete)",
                               arg=dialog.element_handle())
        images = dialog.evaluate("d => Array.from(d.querySelectorAll('img')).map(i => [i.alt, i.naturalWidth])")
        return [tuple(i) for i in images]

    def close_dialog(self) -> None:
        self.page.locator("[role=dialog][aria-modal=true]").get_by_role("button", name="Close").click()


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    chromium = ensure_chromium()
    root = tmp_path_factory.mktemp("ui")
    # The demo, CPU-sized: a few training steps, two sampling steps, two eval timesteps.
    config = copy_demo(root, config=dict(
        max_train_steps=8, checkpointing_steps=4, lr_warmup_steps=2, validation_num_inference_steps=2,
        validation_prompts=[], validation_resolution="128x128", eval_timesteps=2,
    ), dataset={"synthetic_num_images": 24})
    home = root / "dagster_home"
    env = os.environ | {"DAGSTER_HOME": str(home), "PIXART_CONFIG": str(config)}
    start = time.perf_counter()
    cli(env, "sync", "--config", str(config))  # also seeds home/dagster.yaml from the repository's
    print(f"pixart-pipeline sync: {time.perf_counter() - start:.0f}s")
    dev = DagsterDev(env, root / "dagster_dev.log")
    try:
        dev.wait_ready()
        with sync_playwright() as p:
            # Root (CI) needs --no-sandbox; a container's small /dev/shm would crash tabs without the second flag.
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(120_000)  # a page's first load compiles queries on a busy machine
            shots = root / "screenshots"
            shots.mkdir()
            yield UI(page, dev, env, config, shots)
            print(f"screenshots: {shots}")
            browser.close()
    finally:
        dev.stop()


def test_lineage_shows_four_groups_and_every_asset(ui):
    page = ui.page
    ui.goto("/asset-groups")
    page.get_by_text("evaluation", exact=True).last.wait_for()
    page.wait_for_timeout(3000)  # the community sign-up dialog would be up by now (nux is off in deploy/local/dagster.yaml)
    assert page.get_by_role("dialog").count() == 0
    page.mouse.click(1000, 800, button="right")  # the graph's background menu
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.get_by_text("evaluation_report", exact=True).wait_for()
    # Each asset node lies inside its group's box (SVG foreignObjects with x, y, width, height).
    boxes = page.evaluate("""() => Array.from(document.querySelectorAll('foreignObject')).map(f => ({
        group: f.classList.contains('group'), text: (f.textContent || '').trim(),
        x: +f.getAttribute('x'), y: +f.getAttribute('y'), w: +f.getAttribute('width'), h: +f.getAttribute('height')}))""")
    groups = {b["text"]: b for b in boxes if b["group"]}
    assert set(groups) == set(GROUPS)
    nodes = [b for b in boxes if not b["group"] and b["text"] and b["w"] < 400]
    inside = {name: [] for name in groups}
    for node in nodes:
        for name, g in groups.items():
            if g["x"] <= node["x"] and node["x"] + node["w"] <= g["x"] + g["w"] and g["y"] <= node["y"] <= g["y"] + g["h"]:
                inside[name].append(node["text"])
    assert {name: len(texts) for name, texts in inside.items()} == GROUPS, inside
    assert sorted(inside["caches"]) == ["shapes", "text_embed_cache"]
    assert inside["training"] == ["trained_checkpoint"] and inside["evaluation"] == ["evaluation_report"]
    page.wait_for_timeout(2000)  # for the picture only: node colours follow once statuses load
    ui.shot("lineage")
    # The catalog names every asset in full, all materialized by the sync.
    ui.goto("/assets")
    page.get_by_text("evaluation_report", exact=True).first.wait_for()
    for name in ASSETS:
        assert page.get_by_text(name, exact=True).count() >= 1, name
    expect(page.get_by_text("Materialized", exact=True)).to_have_count(len(ASSETS), timeout=60_000)
    ui.shot("catalog")


def test_asset_pages_render_what_a_user_came_for(ui):
    page = ui.page
    ui.goto("/assets/bucketed_metadata/shapes")
    row = page.locator("tr", has=page.get_by_text("bucket_histogram", exact=True))
    for bucket in ("0.67", "1.0", "1.5"):  # the histogram table, rendered
        expect(row).to_contain_text(bucket)
    samples = ui.markdown_images("bucket_samples")
    assert len(samples) == 6 and all(width > 0 for _, width in samples), samples  # two per bucket
    ui.shot("bucketed_metadata")
    ui.close_dialog()

    ui.goto("/assets/trained_checkpoint")
    assert [alt for alt, width in ui.markdown_images("images") if width > 0] == ["loss.png"]
    ui.shot("trained_checkpoint")
    ui.close_dialog()

    ui.goto("/assets/evaluation_report")
    for metric in ("clip_score", "eval_loss_base", "eval_loss_trained"):
        row = page.locator("tr", has=page.get_by_text(metric, exact=True)).first  # (then the metrics table)
        expect(row).to_contain_text(re.compile(r"\d\.\d"))
    images = ui.markdown_images("images")
    assert images and all(width > 0 for _, width in images), images  # the validation images
    ui.shot("evaluation_report")
    ui.close_dialog()


def test_materialize_unsynced_after_a_learning_rate_edit_offers_exactly_the_checkpoint(ui):
    page = ui.page
    ui.edit_learning_rate(0.002)
    ui.goto("/asset-groups")
    ui.reload_definitions()
    page.get_by_role("button", name="arrow_drop_down").last.click()  # beside "Materialize all"
    page.get_by_role("menuitem", name="Materialize unsynced").click()
    dialog = page.locator("[role=dialog][aria-modal=true]")
    launch = dialog.get_by_role("button", name=re.compile(r"^Materialize \d+ assets?$"))
    launch.wait_for()
    listed = [t for t in dialog.inner_text().splitlines() if t.strip()]
    assert launch.inner_text() == "Materialize 1 assets" and "trained_checkpoint" in listed, listed
    assert not any(name in listed for name in ASSETS if name != "trained_checkpoint"), listed
    ui.shot("materialize_unsynced")
    launch.click()
    page.get_by_role("link", name="View", exact=True).click()  # the toast's link to the launched run
    ui.wait_for_run()
    ui.filter_log("samples/s")  # only the trainer's progress lines carry a throughput
    assert page.get_by_text(TRAINER_PROGRESS).count() >= 1  # the trainer's progress lines, via Pipes
    ui.shot("checkpoint_run")
    # Dagster does not propagate staleness: the evaluation is now behind its new checkpoint.
    plan = ui.plan()
    assert re.findall(r"^(MISSING|UNSYNCED|MAY RE-RUN) +(\S+)", plan, re.M) == [("UNSYNCED", "evaluation_report")], plan


def test_one_launch_of_the_sync_job_runs_the_whole_cascade(ui):
    page = ui.page
    ui.edit_learning_rate(0.003)
    ui.goto("/asset-groups")
    ui.reload_definitions()
    ui.goto("/locations/pixart_pipeline.definitions/jobs/sync/playground")
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    ui.wait_for_run()
    ui.filter_log("->")
    page.get_by_text("-> evaluation_report").wait_for()
    lines = list(dict.fromkeys(page.get_by_text(re.compile(r"^-> ")).all_inner_texts()))
    assert [line.split(":")[0] for line in lines] == ["-> trained_checkpoint", "-> evaluation_report"], lines
    assert "learning_rate: 0.002 -> 0.003" in lines[0]
    ui.shot("sync_run")
    assert "Everything is in sync" in ui.plan()
