"""Every `foresight` command a script would read accepts `--json` (issue 16, item 4).

The lists are explicit: a new command must be put in one of them, so whether scripts read it is a
decision, not an accident. No server involved: the command tree is walked, and the commands that
need none are run.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from infra.cli import app
from infra.pool.faults import Scenario

# results a script reads: each must accept --json
SCRIPT_READ = {
    "doctor", "config", "replay", "verify", "decisions", "adapt", "health", "autoscale", "whatif", "backtest",
    "train", "demo", "demo-days",
    "stack up", "stack down", "stack status",
    "db migrate", "db retain",
    "ingest file",
    "bench ingest", "bench serving", "bench streams", "bench registry", "bench autoscale", "bench lb",
    "registry list", "registry leaders", "registry show", "registry drain", "registry undrain",
    "registry deregister",
    "pool status", "pool scale",
    "faults generate", "faults record", "evaluate risk", "chaos",
}
# long-running servers and workers (read through their metrics and ClickHouse, not their output)
SERVERS = {
    "stream", "record", "serve", "dashboard", "registry-sync", "ingest syslog", "ingest tail", "ingest http",
    "ingest scrape", "pool run", "keda-scaler",
}
# their output is already a JSON document meant for another program (Grafana's import)
DOCUMENTS = {"grafana"}


def commands() -> Iterator[tuple[str, Any]]:
    """(path, command) of every visible command; typer ships its own click, hence Any."""
    root = typer.main.get_command(app)
    ctx = typer.Context(root)

    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        if hasattr(cmd, "list_commands"):  # a group
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, [*path, name])
        elif not cmd.hidden:
            yield " ".join(path), cmd

    return walk(root, [])


def test_every_visible_command_is_classified() -> None:
    seen = {name for name, _ in commands()}
    assert not SCRIPT_READ & SERVERS and not SCRIPT_READ & DOCUMENTS and not SERVERS & DOCUMENTS
    assert seen - SCRIPT_READ - SERVERS - DOCUMENTS == set(), "new command: put it in one of the lists"
    assert (SCRIPT_READ | SERVERS | DOCUMENTS) - seen == set(), "a listed command is gone"


@pytest.mark.parametrize("name", sorted(SCRIPT_READ))
def test_commands_a_script_reads_accept_json(name: str) -> None:
    cmd = dict(commands())[name]
    flags = {opt for param in cmd.params for opt in getattr(param, "opts", [])}
    assert "--json" in flags, f"`foresight {name}` has no --json"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no foresight.toml: the defaults
    monkeypatch.delenv("FORESIGHT_CONFIG", raising=False)
    return CliRunner()


def test_config_reference_as_json(runner: CliRunner) -> None:
    out = runner.invoke(app, ["config", "--reference", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["setting"]: r for r in json.loads(out.stdout)}
    assert rows["demo.interval_s"]["default"] == "5.0"
    assert rows["autoscaler.interval_s"]["env"] == "FORESIGHT_AUTOSCALER__INTERVAL_S"


def test_faults_generate_as_json_is_a_scenario(runner: CliRunner) -> None:
    out = runner.invoke(app, ["faults", "generate", "--seed", "7", "--json"])
    assert out.exit_code == 0, out.output
    scenario = Scenario.model_validate(json.loads(out.stdout))
    assert scenario.seed == 7 and scenario.faults
