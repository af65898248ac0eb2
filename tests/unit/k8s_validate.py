"""Offline validation of Kubernetes objects, for the manifest tests (no cluster).

Built-in kinds against the kubernetes client's models (pydantic models since kubernetes 37: strict
types, unknown fields refused, required fields enforced). Custom resources (KubeRay,
KEDA) against JSON Schemas in k8s_schemas/, written from their documentation; the pod templates
inside them are then checked as V1PodTemplateSpec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from kubernetes import client
from pydantic import BaseModel, ValidationError

SCHEMAS = Path(__file__).resolve().parent / "k8s_schemas"
CUSTOM = {("ray.io/v1", "RayService"): "rayservice.json", ("ray.io/v1", "RayJob"): "rayjob.json",
          ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
          ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.json"}
# Where each custom kind holds pod templates (lists marked by a trailing []).
POD_TEMPLATES = {
    "RayService": ["spec.rayClusterConfig.headGroupSpec.template",
                   "spec.rayClusterConfig.workerGroupSpecs[].template"],
    "RayJob": ["spec.rayClusterSpec.headGroupSpec.template", "spec.rayClusterSpec.workerGroupSpecs[].template"],
}


def model_for(api_version: str, kind: str) -> type[BaseModel]:
    version = api_version.rsplit("/", 1)[-1]
    name = version[0].upper() + version[1:] + kind
    model = getattr(client, name, None)
    if model is None:
        raise LookupError(f"no model {name} for {api_version} {kind}")
    return model


def check_model(data: Any, model: type[BaseModel], path: str, errors: list[str]) -> None:
    """The client's models are strict pydantic models: unknown fields, wrong types, missing required fields."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
            errors.append(f"{path}{where}: {error['msg']}")


def _at(doc: Any, dotted: str) -> list[tuple[str, Any]]:
    found = [("", doc)]
    for part in dotted.split("."):
        many = part.endswith("[]")
        key = part.removesuffix("[]")
        step = []
        for where, node in found:
            if not isinstance(node, dict) or key not in node:
                continue
            if many:
                step += [(f"{where}.{key}[{i}]", item) for i, item in enumerate(node[key])]
            else:
                step.append((f"{where}.{key}", node[key]))
        found = step
    return found


def validate(obj: dict[str, Any]) -> list[str]:
    """Every problem found in one object, as `kind/name.path: message`; empty when it is valid."""
    kind, api_version = obj.get("kind", "?"), obj.get("apiVersion", "?")
    name = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
    errors: list[str] = []
    schema_file = CUSTOM.get((api_version, kind))
    if schema_file is not None:
        schema = json.loads((SCHEMAS / schema_file).read_text())
        for error in jsonschema.Draft202012Validator(schema).iter_errors(obj):
            errors.append(f"{name}.{'.'.join(str(p) for p in error.absolute_path)}: {error.message}")
        check_model(obj.get("metadata"), client.V1ObjectMeta, f"{name}.metadata", errors)
        for dotted in POD_TEMPLATES.get(kind, []):
            for where, template in _at(obj, dotted):
                check_model(template, client.V1PodTemplateSpec, f"{name}{where}", errors)
        return errors
    try:
        model = model_for(api_version, kind)
    except LookupError as exc:
        return [f"{name}: {exc}"]
    check_model(obj, model, name, errors)
    return errors
