"""Shared test fixtures: no network, and the tiny models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

# Set before anything imports huggingface_hub: tests never reach the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory) -> Path:
    """A session-wide folder holding the tiny models (what ``resolve_pretrained`` calls cache_dir)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_pixart_path(model_cache_dir) -> str:
    """Folder of the tiny random PixArt Sigma pipeline (built once per session)."""
    from pixart_pipeline.models import TINY_MODEL_NAME, resolve_pretrained

    return resolve_pretrained(TINY_MODEL_NAME, None, model_cache_dir)


@pytest.fixture(scope="session")
def tiny_clip_path(model_cache_dir) -> str:
    """Folder of the tiny random CLIP (built once per session)."""
    from pixart_pipeline.models import TINY_CLIP_NAME, resolve_pretrained

    return resolve_pretrained(TINY_CLIP_NAME, None, model_cache_dir)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/postgres_server.py); ``.new_database()`` per test."""
    from postgres_server import running_postgres

    with running_postgres() as server:
        yield server
