from pathlib import Path

import pytest

from infra.core.settings import ConfigFileError, load_settings


def test_defaults_are_loopback_and_documented_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.kafka.bootstrap_servers.startswith("127.0.0.1:")
    assert s.serving.host == "127.0.0.1"
    assert s.state == tmp_path / ".foresight"


def test_file_then_env_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text('state_dir = "/srv/fs"\n[streams]\nwindow_s = 30\n[kafka]\npartitions = 8\n')
    monkeypatch.setenv("FORESIGHT_KAFKA__PARTITIONS", "2")
    s = load_settings(cfg)
    assert s.streams.window_s == 30  # from the file
    assert s.kafka.partitions == 2  # the environment wins over the file
    assert s.state == Path("/srv/fs")


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text("[kafka]\nbootstrap = 'x'\n")
    with pytest.raises(ValueError, match="bootstrap"):
        load_settings(cfg)


def test_missing_named_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_no_two_components_default_to_the_same_port() -> None:
    """Every `*port*` setting of every section, and each port of a list of them, is distinct."""
    from infra.core.settings import Settings

    seen: dict[int, str] = {}
    settings = Settings()
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        if not hasattr(section, "model_dump"):
            continue
        for key, value in section.model_dump().items():
            if "port" not in key or isinstance(value, str | type(None)):
                continue
            for port in value if isinstance(value, list) else [value]:
                where = f"{section_name}.{key}"
                assert port not in seen, f"{where} and {seen.get(port)} both default to port {port}"
                seen[port] = where
    assert len(seen) > 15


def test_instance_windows_default_to_the_window_and_must_divide_it() -> None:
    from infra.core.settings import StreamSettings

    assert StreamSettings().instance_window == StreamSettings().window_s == 10
    assert StreamSettings(instance_window_s=2).instance_window == 2
    with pytest.raises(ValueError, match=r"instance_window_s \(3\) must divide streams.window_s \(10\)"):
        StreamSettings(instance_window_s=3)
    with pytest.raises(ValueError):
        StreamSettings(instance_window_s=0)
