import json

import pytest

from pixart_pipeline.data.hub import MARKER, HubUnavailableError, download_hub_dataset


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time; make sure this process is offline too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_offline_raises_clear_error(offline, tmp_path):
    with pytest.raises(HubUnavailableError) as info:
        download_hub_dataset("someone/shapes", "v1.0", ["*.png"], tmp_path / "shapes")
    message = str(info.value)
    assert "someone/shapes" in message and "'v1.0'" in message
    assert "huggingface-cli download someone/shapes --repo-type dataset --revision v1.0 --include '*.png'" in message
    assert "instance_data_dir" in message
    assert isinstance(info.value, ValueError)


def test_offline_reuses_an_earlier_download(offline, tmp_path):
    local = tmp_path / "shapes"
    local.mkdir()
    sha = "0123456789abcdef0123456789abcdef01234567"
    marker = {"repo_id": "someone/shapes", "revision": "main", "sha": sha, "allow_patterns": None}
    (local / MARKER).write_text(json.dumps(marker))
    assert download_hub_dataset("someone/shapes", None, None, local) == sha
    assert download_hub_dataset("someone/shapes", sha[:10], None, local) == sha
    with pytest.raises(HubUnavailableError):
        download_hub_dataset("someone/shapes", "other-branch", None, local)
    with pytest.raises(HubUnavailableError):
        download_hub_dataset("someone/shapes", None, ["*.jpg"], local)
