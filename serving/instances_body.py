"""Reading `{"service", "instances": [...]}` bodies (weights, risk) straight into one array.

FastAPI would parse the JSON with the standard library, then build and validate 1,000 pydantic
objects: ~2.7 ms, against a model call of ~0.1 ms. The common case (plain numbers in range) is
checked in bulk on an array instead (~0.6 ms); any body that fails a bulk check goes through the
pydantic model, which accepts what it accepts (numeric strings, say) and words the 422 errors in
FastAPI's shape. The endpoints then declare their body in OpenAPI themselves (`request_body_doc`).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import Example
from pydantic import BaseModel, ValidationError

from serving.schemas import MAX_INSTANCES, InstanceFeatures

Body = TypeVar("Body", bound=BaseModel)
REF = "#/components/schemas/{model}"
MAX_NAME = 256
# Numeric fields of InstanceFeatures with their defaults (None: required), in array column order.
COLUMNS: tuple[tuple[str, float | None], ...] = (
    ("latency_p99_ms", None), ("latency_p50_ms", 0.0), ("requests", 0.0), ("error_rate", 0.0), ("queue", 0.0),
    ("sessions", 0.0), ("resource", 0.0), ("busy", 0.0))
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
COLUMN = {name: i for i, (name, _) in enumerate(COLUMNS)}
# A body's 1,000 rows are read with these (C loops); per-row Python would cost ~0.6 ms more. Bodies
# without the saturation fields (sessions, resource, busy; added later) still take a C loop: BASIC_ROW.
ROW = itemgetter(*COLUMN)
BASIC = 5
BASIC_ROW = itemgetter(*COLUMN_NAMES[:BASIC])
NAME = itemgetter("instance")


@dataclass(frozen=True)
class Rows:
    """One request's instances as the replicas read them, with the length of the windows they cover
    (None: not given; a learned health model then assumes its own and says so)."""

    features: np.ndarray  # float32 [n, len(COLUMNS)]
    window_s: float | None = None


def rows_of(request: np.ndarray | Rows) -> Rows:
    """A bare array (older callers) is rows of unknown window length."""
    return request if isinstance(request, Rows) else Rows(request)


def window_check(window_s: float | None, model_window_s: float, kind: str, version: str) -> tuple[bool, str | None]:
    """May a health model trained on `model_window_s` windows answer rows of `window_s` ones? Its count
    inputs are per window, so another length would be read as another load: refused, the baseline answers.
    Returns (use the model, the note for the answer)."""
    if window_s is None:
        return True, (f"window_s not given: assumed the {kind} model's {model_window_s:g} s (its counts are per "
                      "window; send window_s)")
    if abs(window_s - model_window_s) > 1e-6:
        return False, (f"{kind} model {version} is for {model_window_s:g} s windows, the request's are "
                       f"{window_s:g} s: answered from the baseline")
    return True, None


@dataclass(frozen=True)
class InstancesBody:
    service: str
    names: list[str]
    features: np.ndarray  # float32 [n, len(COLUMNS)]
    window_s: float | None = None

    @property
    def rows(self) -> Rows:
        return Rows(self.features, self.window_s)

    def columns(self, names: tuple[str, ...]) -> np.ndarray:
        return np.ascontiguousarray(self.features[:, [COLUMN[name] for name in names]])


def raw_values(features: np.ndarray) -> dict[str, np.ndarray]:
    """An InstancesBody's `features` (columns as `COLUMNS`) by field name, as health_features.derive reads them."""
    return {name: features[:, i] for i, name in enumerate(COLUMN_NAMES)}


def parse_instances_body(raw: bytes, model: type[BaseModel]) -> InstancesBody:
    """The body's instances as one array; RequestValidationError (422) with pydantic's messages."""
    fast = _bulk_checked(raw)
    if fast is not None:
        return fast
    body = validated(raw, model)
    instances: list[InstanceFeatures] = body.instances  # type: ignore[attr-defined]
    return InstancesBody(body.service, [i.instance for i in instances],  # type: ignore[attr-defined]
                         instances_array(instances, COLUMN_NAMES), getattr(body, "window_s", None))


def _bulk_checked(raw: bytes) -> InstancesBody | None:
    """The body when it is plainly valid, else None (the pydantic path then decides)."""
    try:
        data: Any = orjson.loads(raw)
        service, instances, window_s = data["service"], data["instances"], data.get("window_s")
        if not (type(service) is str and 0 < len(service) <= MAX_NAME and type(instances) is list
                and 0 < len(instances) <= MAX_INSTANCES):
            return None
        if window_s is not None and not (type(window_s) in (int, float) and 0 < window_s < float("inf")):
            return None
        names = list(map(NAME, instances))
        try:
            x = np.asarray(list(map(ROW, instances)), dtype=np.float64)  # every field given: no Python loop
        except KeyError:
            try:
                basic = np.asarray(list(map(BASIC_ROW, instances)), dtype=np.float64).reshape(len(instances), BASIC)
                x = np.zeros((len(instances), len(COLUMNS)))
                x[:, :BASIC] = basic
                if any(name in i for i in instances for name in COLUMN_NAMES[BASIC:]):
                    raise KeyError("some saturation fields given") from None
            except KeyError:
                x = np.asarray([[i[name] if default is None else i.get(name, default) for name, default in COLUMNS]
                                for i in instances], dtype=np.float64)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not (set(map(type, names)) == {str} and min(map(len, names)) > 0 and max(map(len, names)) <= MAX_NAME):
        return None
    requests = x[:, COLUMN["requests"]]
    shares = x[:, [COLUMN["error_rate"], COLUMN["resource"], COLUMN["busy"]]]
    if not (np.isfinite(x).all() and (x >= 0).all() and (shares <= 1).all()
            and (requests == np.floor(requests)).all()):
        return None
    return InstancesBody(service, names, x.astype(np.float32), None if window_s is None else float(window_s))


def validated(raw: bytes, model: type[Body]) -> Body:
    """`model` from the raw JSON body; RequestValidationError (422, FastAPI's format) when invalid."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


def instances_array(instances: list[InstanceFeatures], columns: tuple[str, ...]) -> np.ndarray:
    """One row per instance, the named fields as float32 columns."""
    rows = [[getattr(instance, name) for name in columns] for instance in instances]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(columns))


def request_body_doc(model: type[BaseModel], examples: dict[str, Example]) -> dict[str, Any]:
    """`openapi_extra` for an endpoint that reads its body itself: schema reference and examples."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": REF.format(model=model.__name__)},
        "examples": {name: dict(ex) for name, ex in examples.items()},
    }}}}


def component_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI component schemas of `models` and the models they contain."""
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out
