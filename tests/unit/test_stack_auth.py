"""Authenticated by default: `stack up` writes a random token (0600) that every process with that state folder uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.core.settings import Settings
from infra.stack.launcher import StackError, ensure_token


def test_stack_up_writes_a_private_token_that_settings_then_use(tmp_path: Path) -> None:
    said: list[str] = []
    s = Settings(state_dir=tmp_path)
    assert s.serving.token is None and s.ingest.http_token is None  # no stack token yet
    path = ensure_token(s, said.append)
    assert path == tmp_path / "api-token"
    assert os.stat(path).st_mode & 0o777 == 0o600
    token = path.read_text()
    assert len(token) >= 40 and token not in " ".join(said)  # never said aloud
    assert s.serving_token == token  # this process's clients use it at once
    later = Settings(state_dir=tmp_path)  # and so does every process started after
    assert later.serving_token == token
    assert later.ingest_token == token
    assert ensure_token(later, said.append) == path and path.read_text() == token  # kept, not rotated
    assert token not in later.model_dump_json()


def test_a_token_of_its_own_wins_and_anonymous_is_explicit(tmp_path: Path) -> None:
    ensure_token(Settings(state_dir=tmp_path), lambda _: None)
    own = Settings(state_dir=tmp_path, serving={"token": "mine"})
    assert own.serving_token == "mine"
    other = tmp_path / "anon"
    anonymous = Settings(state_dir=other, auth={"anonymous": True})
    said: list[str] = []
    assert ensure_token(anonymous, said.append) is None
    assert not (other / "api-token").exists() and "anonymous" in said[0]
    assert anonymous.serving.token is None


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("guessable")
    path.chmod(0o644)
    with pytest.raises(StackError, match="mode 0600"):
        ensure_token(Settings(state_dir=tmp_path), lambda _: None)
