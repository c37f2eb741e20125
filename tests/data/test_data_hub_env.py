"""``HF_ENDPOINT`` and ``HF_TOKEN`` reach huggingface_hub: a real ``download_hub_dataset`` call, in a
subprocess whose environment sets them (huggingface_hub reads some settings at import time, and this
test process is offline), talks to a loopback HTTP server started here. The server records each
request's path and ``Authorization`` header and refuses it, so nothing leaves the machine; the
caller must then get our clear error naming the repo and how to fix it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_test_token_not_a_real_one"
SCRIPT = """
import json, sys
from pathlib import Path
from pixart_pipeline.data.hub import HubUnavailableError, download_hub_dataset
try:
    download_hub_dataset("someone/shapes", "v1.0", ["*.png"], Path(sys.argv[1]))
except HubUnavailableError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
else:
    print(json.dumps({"error": None}))
"""


def _server(status: int, error_code: str | None):
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"error": "refused by the test server"}).encode()
            self.send_response(status)
            if error_code:
                self.send_header("X-Error-Code", error_code)  # how the Hub says "no such repo"
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = _answer

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.mark.parametrize("status, error_code, expected", [
    (404, "RepoNotFound", "was not found (or is private)"),
    (500, None, "Could not fetch Hugging Face Hub"),
])
def test_hf_endpoint_and_token_reach_the_hub_client(tmp_path, status, error_code, expected):
    server, seen = _server(status, error_code)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        env |= {
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
            "HF_TOKEN": TOKEN,
            "HF_HUB_CACHE": str(tmp_path / "hub"),  # empty: nothing to fall back on
            "HF_HOME": str(tmp_path / "hf_home"),  # no stored token from the user's login
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",  # loopback, never through a proxy
        }
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "shapes")], check=False, env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The request went to HF_ENDPOINT, for this dataset and revision, with the token as a bearer.
    assert seen, "no request reached the HF_ENDPOINT server"
    path, auth = seen[0]
    assert path.startswith("/api/datasets/someone/shapes/revision/v1.0"), seen
    assert auth == f"Bearer {TOKEN}"
    # Our error, not huggingface_hub's: the repo, the revision and the fix; never the token.
    assert result["error"] == "HubUnavailableError"
    message = result["message"]
    assert expected in message and "'someone/shapes'" in message and "'v1.0'" in message
    assert "huggingface-cli download someone/shapes --repo-type dataset --revision v1.0" in message
    assert TOKEN not in message
    assert not (tmp_path / "shapes").exists() or not any((tmp_path / "shapes").iterdir())
