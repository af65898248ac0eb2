"""The configuration reference: every setting with its environment variable and default."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined, to_jsonable_python

from infra.core.settings import Settings


def rows(model: type[BaseModel] = Settings, prefix: str = "",
         defaults: BaseModel | None = None) -> Iterator[tuple[str, str, str, str]]:
    """(toml key, env var, default, description) for every leaf setting. A section's defaults are those of
    its default value when it has one (e.g. the predictive preset of `knobs`), not its class's."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from rows(annotation, f"{prefix}{name}.", default if isinstance(default, annotation) else None)
            continue
        key = f"{prefix}{name}"
        if isinstance(default, SecretStr):  # a secret's default is empty; never print one that is not
            default = "" if not default.get_secret_value() else "**********"
        shown = "none" if default is None else "required" if default is PydanticUndefined else json.dumps(
            to_jsonable_python(default if not hasattr(default, "__fspath__") else str(default)))
        env = "FORESIGHT_" + key.replace(".", "__").upper() if "[]" not in prefix else "(in the list's JSON)"
        yield key, env, shown, field.description or ""
        item = get_args(annotation)[0] if get_origin(annotation) is list and get_args(annotation) else None
        if isinstance(item, type) and issubclass(item, BaseModel):  # a list of sections: each item's fields
            yield from rows(item, f"{key}[].")


def markdown_table() -> str:
    lines = ["| setting (foresight.toml) | environment | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{k}` | `{e}` | `{d}` | {m} |" for k, e, d, m in rows()]
    return "\n".join(lines)
