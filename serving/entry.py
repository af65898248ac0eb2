"""The Serve application builder for clusters that deploy it themselves (KubeRay's RayService).

`serveConfigV2` names `serving.entry:build` with `args: {config: <path of foresight.toml>}`;
Serve calls it on the cluster and deploys what it returns. The local stack and `foresight serve`
use `serving.runner` instead, which also starts Ray.
"""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from infra.core.model_registry import registry_root
from infra.core.settings import load_settings
from serving.app import build_app


def build(args: dict[str, str]) -> Application:
    """The serving application from the settings file `args["config"]` (else FORESIGHT_CONFIG)."""
    config = args.get("config")
    s = load_settings(Path(config) if config else None)
    return build_app(s.serving, s.clickhouse, registry_root(s.state))
