"""Validation previews over a webhook: a real HTTP server on loopback receives SimpleTuner's
``validation.image`` messages with Tiny-AutoEncoder-decoded PNGs at the documented steps."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_pipeline.config.webhooks import WebhookTarget
from pixart_pipeline.models import resolve_pretrained
from pixart_pipeline.models.tiny_tae import TINY_TAE_NAME
from pixart_pipeline.training.previews import (
    PreviewImage,
    PreviewSender,
    decode_previews,
    is_preview_step,
    load_preview_decoder,
    preview_inputs,
)


class Hook:
    """A webhook receiver on 127.0.0.1 (an ephemeral port) that keeps every JSON body and header."""

    def __init__(self, status: int = 200):
        received, headers = [], []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                headers.append({"X-API-Key": self.headers.get("X-API-Key")})  # names are case-insensitive
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received, self.headers = received, headers
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Hook":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def decoder(model_cache_dir):
    return load_preview_decoder(resolve_pretrained(TINY_TAE_NAME, None, model_cache_dir), torch.device("cpu"))


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_the_documented_steps():
    # validation_num_inference_steps 20, validation_preview_steps 5 -> steps 5, 10, 15, 20 (1-based)
    assert [s + 1 for s in range(20) if is_preview_step(s, 5)] == [5, 10, 15, 20]
    assert [s + 1 for s in range(4) if is_preview_step(s, 1)] == [1, 2, 3, 4]


def test_sampling_streams_previews_to_a_loopback_webhook(tiny_pixart_path, decoder, monkeypatch):
    from pixart_pipeline.evaluation.sampling import generate_images, load_pipeline

    monkeypatch.setenv("SIMPLETUNER_JOB_ID", "job-15")
    pipe = load_pipeline(tiny_pixart_path, torch.device("cpu"))
    prompts, sizes = ["a red circle", "a green square"], [(64, 64), (96, 64)]
    with Hook() as hook:
        targets = [WebhookTarget(webhook_type="raw", callback_url=hook.url, auth_token="s3cret"),
                   WebhookTarget(webhook_type="discord", webhook_url=hook.url)]  # gets no previews
        sender = PreviewSender(targets, decoder, every=3, total_steps=6)
        images = generate_images(pipe, prompts, sizes, guidance=3.5, num_inference_steps=6, seed=3,
                                 max_sequence_length=16, preview=sender)
    got = hook.received
    # steps 3 and 6 of 6, for each of the 2 prompts x 2 sizes, to the raw target only
    assert len(got) == sender.sent == 8
    assert sorted((m["data"]["prompt"], tuple(m["data"]["resolution"]), m["data"]["step"]) for m in got) == sorted(
        (p, s, step) for p in prompts for s in sizes for step in (3, 6))
    first = got[0]
    assert set(first) == {"type", "title", "message", "body", "data", "severity", "timestamp", "images", "job_id"}
    assert first["type"] == "validation.image" and first["severity"] == "info" and first["job_id"] == "job-15"
    assert first["data"]["step_label"] == "3/6" and first["data"]["validation_type"] == "final"
    assert first["title"] == first["message"] == f"Validation (step 3/6): {'p00_s00'}"
    assert first["body"] == first["data"]["prompt"] == "a red circle"
    assert isinstance(first["data"]["timestep"], float)
    assert all(h.get("X-API-Key") == "s3cret" for h in hook.headers)
    for message in got:  # a PNG at the image's own size (the Tiny AutoEncoder upsamples latents by 8)
        w, h = message["data"]["resolution"]
        png = _png(message["images"][0])
        assert png.format == "PNG" and png.size == (w, h) and png.mode == "RGB"
    # the step-3 and step-6 previews of one image differ (the latents moved), and the final images exist
    p0 = {m["data"]["step"]: np.asarray(_png(m["images"][0])) for m in got
          if m["data"]["prompt"] == "a red circle" and m["data"]["resolution"] == [64, 64]}
    assert not (p0[3] == p0[6]).all()
    assert len(images) == 4


def test_the_preview_is_the_tiny_autoencoders_decoding_of_the_latents(decoder):
    latents = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    with Hook() as hook:
        sender = PreviewSender([WebhookTarget(webhook_type="raw", callback_url=hook.url)], decoder, 1, 1)
        sender.on_step(0, torch.tensor(999), latents, [PreviewImage("x", 48, 64, "p00_s00")])
    expected = np.asarray(decode_previews(decoder, latents)[0])
    with torch.no_grad():
        pixels = decoder.decode(latents).sample[0]  # [3, 64, 48] in [-1, 1]
    by_hand = (pixels / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert (expected == by_hand).all()
    assert (np.asarray(_png(hook.received[0]["images"][0])) == expected).all()
    assert hook.received[0]["data"]["timestep"] == 999.0


def test_a_failing_webhook_never_stops_sampling(decoder, caplog):
    with Hook(status=500) as broken:
        dead = Hook()
        dead_url = dead.url  # a port nothing listens on any more
        dead.server.server_close()
        targets = [WebhookTarget(webhook_type="raw", callback_url=broken.url),
                   WebhookTarget(webhook_type="raw", callback_url=dead_url)]
        sender = PreviewSender(targets, decoder, 1, 2)
        latents = torch.zeros(1, 4, 4, 4)
        for step in range(2):
            sender.on_step(step, 10, latents, [PreviewImage("x", 32, 32, "p00_s00")])
    assert len(broken.received) == 2 and sender.sent == 0
    warned = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(warned) == 2  # once per target, not once per message


def test_log_level_and_type_filter_the_targets(decoder):
    targets = [WebhookTarget(webhook_type="raw", callback_url="http://127.0.0.1:9/a", log_level="warning"),
               WebhookTarget(webhook_type="discord", webhook_url="http://127.0.0.1:9/b"),
               WebhookTarget(webhook_type="raw", callback_url="http://127.0.0.1:9/c", log_level="debug")]
    assert [t.url for t in PreviewSender(targets, decoder, 1, 1).targets] == ["http://127.0.0.1:9/c"]


def test_an_evaluation_with_validation_preview_posts_to_the_webhook(tmp_path, tiny_pixart_path, decoder,
                                                                    model_cache_dir):
    from pixart_pipeline.evaluation import EvalSpec, run_evaluation

    with Hook() as hook:
        spec = EvalSpec.from_dict({
            "pipeline_dir": tiny_pixart_path, "base_model": tiny_pixart_path, "out_dir": str(tmp_path / "report"),
            "device": "cpu", "max_sequence_length": 16,
            "settings": {"validation_prompts": ["a photo"], "validation_resolution": "64x64",
                         "validation_num_inference_steps": 4, "validation_preview": True,
                         "validation_preview_steps": 2, "evaluation_type": "none",
                         "webhook_config": {"webhook_type": "raw", "callback_url": hook.url}},
            "webhooks": [{"webhook_type": "raw", "callback_url": hook.url}],
            "preview_decoder": resolve_pretrained(TINY_TAE_NAME, None, model_cache_dir)})
        result = run_evaluation(spec)
    assert [m["data"]["step"] for m in hook.received] == [2, 4]
    assert [m["data"]["step_label"] for m in hook.received] == ["2/4", "4/4"]
    assert len(result.image_paths) == 1


def test_webhook_config_as_simpletuner_accepts_it(tmp_path):
    from pixart_pipeline.config import ConfigError, load_config
    from pixart_pipeline.config.webhooks import webhook_targets
    from tests.demo_copy import copy_demo

    target = {"webhook_type": "raw", "callback_url": "http://127.0.0.1:8000/hook"}
    on = {"validation_preview": True, "validation_preview_decoder": TINY_TAE_NAME}
    inline = load_config(copy_demo(tmp_path / "inline", config=on | {"webhook_config": target}))
    as_string = load_config(copy_demo(tmp_path / "string", config=on | {"webhook_config": json.dumps([target])}))
    path = copy_demo(tmp_path / "file", config=on | {"webhook_config": "hooks.json"})
    (path.parent / "hooks.json").write_text(json.dumps(target))  # relative to config.json
    in_file = load_config(path)
    for cfg in (inline, as_string, in_file):
        assert webhook_targets(cfg.training.webhook_config, cfg.config_path.parent) == [WebhookTarget(**target)]
    inputs = preview_inputs(in_file)
    assert inputs["webhooks"] == [WebhookTarget(**target)] and inputs["preview_decoder"].endswith(TINY_TAE_NAME + "-r3")
    assert preview_inputs(load_config(copy_demo(tmp_path / "off"))) == {}

    with pytest.raises(ConfigError, match="validation_preview needs webhook_config"):
        load_config(copy_demo(tmp_path / "a", config={"validation_preview": True}))
    with pytest.raises(ConfigError, match="missing.json does not exist"):
        load_config(copy_demo(tmp_path / "b", config={"webhook_config": "missing.json"}))
    with pytest.raises(ConfigError, match="callback_url"):
        load_config(copy_demo(tmp_path / "c", config={"webhook_config": json.dumps({"webhook_type": "raw"})}))
    with pytest.raises(ConfigError, match="webhook_config"):
        load_config(copy_demo(tmp_path / "d", config={"webhook_config": {"webhook_type": "slack"}}))
