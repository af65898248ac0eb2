"""The Serve application builder that KubeRay's RayService names (`serving.entry:build`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.serve import Application

from infra.core.settings import ConfigFileError
from serving.entry import build


def test_builds_the_app_from_the_settings_file(tmp_path: Path) -> None:
    config = tmp_path / "foresight.toml"
    config.write_text('state_dir = "/var/lib/foresight"\n[serving]\nfront = "proxy"\ningress_replicas = 2\n')
    app = build({"config": str(config)})
    assert isinstance(app, Application)


def test_a_missing_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="not found"):
        build({"config": str(tmp_path / "nope.toml")})
