"""``push_to_hub``: upload the exported pipeline folder (with its model card) to ``hub_model_id``.

The export links the unchanged VAE/T5/tokenizer folders to the base model; the Hub needs real files,
so the upload is staged in ``run_dir/.hub-upload/`` with every link replaced by a hard link (same
file system) or a copy, then removed. The token comes from the environment (``HF_TOKEN``, or the
``huggingface-cli login`` file), never from the config. The upload runs after the run is saved
locally (``result.json`` written): a failed upload is an error that says the training is safe.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pixart_pipeline.errors import InputError


class HubUploadError(InputError):
    """The upload failed; the trained pipeline is saved locally (named in the message)."""


def _link_or_copy_file(src: str, dst: str) -> None:
    real = os.path.realpath(src)
    try:
        os.link(real, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(real, dst)


def stage_for_upload(pipeline_dir: Path, staging: Path) -> Path:
    """A copy of ``pipeline_dir`` without symlinks (hard links where possible)."""
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(pipeline_dir, staging, symlinks=False, copy_function=_link_or_copy_file)
    return staging


def push_pipeline(pipeline_dir: Path, repo_id: str, run_dir: Path) -> str:
    """Upload ``pipeline_dir`` to the model repo ``repo_id`` (created if missing); returns its URL."""
    from huggingface_hub import constants, create_repo, get_token, upload_folder

    saved = f"the trained pipeline is saved at {pipeline_dir}; fix the problem and materialize again to upload it"
    if constants.HF_HUB_OFFLINE:
        raise HubUploadError(f"push_to_hub: cannot upload to {repo_id!r}: HF_HUB_OFFLINE is set; {saved}")
    if not get_token():
        raise HubUploadError(f"push_to_hub: no Hugging Face token (set HF_TOKEN or run `hf auth login`); {saved}")
    staging = Path(run_dir) / ".hub-upload"
    try:
        stage_for_upload(Path(pipeline_dir), staging)
        create_repo(repo_id, repo_type="model", exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=staging, repo_type="model",
                      commit_message="Upload PixArt Sigma fine-tune (pixart_pipeline)")
    except Exception as exc:  # network, auth, quota ...: never lose the local result over it
        raise HubUploadError(f"push_to_hub: upload to {repo_id!r} failed ({type(exc).__name__}: {exc}); "
                             f"{saved}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"https://huggingface.co/{repo_id}"
