"""`foresight adapt`: a round that meets an unavailable dependency is reported and counted, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infra.core.ports import free_port
from infra.core.settings import Settings


def test_clickhouse_away_fails_the_round_with_its_reason(stack: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "FORESIGHT_STATE_DIR": str(tmp_path), "FORESIGHT_CLICKHOUSE__TCP_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-m", "infra.cli", "adapt", "--once", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "round failed" in proc.stderr and "Connection refused" in proc.stderr, proc.stderr
    # clickhouse-driver logs its own connect attempts (with their traceback); the command does not crash
    assert "infra/cli.py" not in proc.stderr
