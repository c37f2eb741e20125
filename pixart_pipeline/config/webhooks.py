"""SimpleTuner's ``webhook_config``: where training events and validation previews are posted.

The key holds one target, a list of them, a JSON string of either, or the path of a JSON file with
either (relative to ``config.json``; SimpleTuner reads it relative to the working directory). Each
target is ``{"webhook_type": "raw", "callback_url": ...}`` (JSON posts) or ``{"webhook_type":
"discord", "webhook_url": ...}``. Only raw targets receive validation previews, as in SimpleTuner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator


class WebhookTarget(BaseModel):
    """One webhook target (SimpleTuner's keys). Strict like every config model."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    webhook_type: Literal["raw", "discord"]
    callback_url: str | None = None  # raw
    webhook_url: str | None = None  # discord (or raw)
    message_prefix: str | None = None
    # the least severe message level the target receives (previews are "info")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    ssl_no_verify: bool = False
    auth_token: str | None = Field(None, repr=False)  # sent as X-API-Key; never logged

    @model_validator(mode="after")
    def _needs_a_url(self) -> "WebhookTarget":
        if self.webhook_type == "raw" and not self.callback_url:
            raise ValueError("a 'raw' webhook needs 'callback_url'")
        if self.webhook_type == "discord" and not self.webhook_url:
            raise ValueError("a 'discord' webhook needs 'webhook_url'")
        return self

    @property
    def url(self) -> str:
        """Where posts go: ``webhook_url``, else ``callback_url`` (SimpleTuner's order)."""
        return self.webhook_url or self.callback_url or ""


_TARGETS = TypeAdapter(WebhookTarget | list[WebhookTarget])


def webhook_targets(value: WebhookTarget | list[WebhookTarget] | str | None, base_dir: Path) -> list[WebhookTarget]:
    """The targets ``webhook_config`` names, read from its JSON string or file when it is one.

    Raises ``ValueError`` naming the file (or the string) and what is wrong with it."""
    if value is None:
        return []
    if isinstance(value, WebhookTarget):
        return [value]
    if isinstance(value, list):
        return list(value)
    text, where = value, "webhook_config"
    if not value.lstrip().startswith(("{", "[")):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ValueError(f"webhook_config: file {path} does not exist (give a JSON file, or the JSON itself)")
        text, where = path.read_text(), str(path)
    try:
        parsed = _TARGETS.validate_python(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{where}: not a webhook target or list of them ({problems})") from None
    return parsed if isinstance(parsed, list) else [parsed]
