"""bucketed_metadata shows a few thumbnails of each aspect bucket (small, inline in the UI)."""

import base64
import io
import re

import pyarrow.parquet as pq
from PIL import Image

from pixart_pipeline.config import load_config
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from demo_copy import copy_demo


def test_bucket_samples_show_each_bucket_as_small_thumbnails(tmp_path):
    cfg = load_config(copy_demo(tmp_path, dataset={"synthetic_num_images": 24}))
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    result = run_bucketed_metadata(cfg, ds)
    images = re.findall(r"!\[([^\]]+)\]\(data:image/png;base64,([^)]+)\)", result.markdown["bucket_samples"])
    assert result.metadata["buckets"] == 3 and len(images) == 2 * 3  # two per bucket
    by_path = {row["path"]: row["bucket"] for row in pq.read_table(result.path).to_pylist()}
    assert {by_path[name] for name, _ in images} == {"0.67", "1.0", "1.5"}
    for name, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert max(im.size) <= 160  # small: stored in the event log with every materialization
