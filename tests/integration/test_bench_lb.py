"""`foresight bench lb --json`, short: three arms on a private HAProxy and 4 private backends (free
loopback ports, a temporary folder; the shared stack is not used). Checks the JSON's shape, that
every arm ran the same schedule and that the Foresight arm changed weights through HAProxy's runtime
API. It asserts no timing target: those are the full bench's figures, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import infra

ROOT = Path(infra.__file__).resolve().parent.parent


def test_bench_lb_short_run_shape_and_same_schedule(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    env.update({"PYTHONPATH": str(ROOT), "FORESIGHT_STATE_DIR": str(tmp_path / "state")})
    proc = subprocess.run([sys.executable, "-P", "-m", "infra.cli", "bench", "lb", "--duration", "9",
                           "--overhead-s", "2", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    arms = ["roundrobin", "leastconn", "foresight"]
    for key in ("p99_ms", "error_pct", "p50_ms", "scheduled", "errors", "served_by"):
        assert set(out[key]) == set(arms), key
    for key in ("ratio_p99_vs_rr", "ratio_p99_vs_leastconn", "ratio_errors_vs_leastconn"):
        assert key in out
    assert all(isinstance(v, float | int) and v > 0 for v in out["p99_ms"].values())
    # Same seed, same schedule: every arm was offered the same requests.
    counts = set(out["scheduled"].values())
    assert len(counts) == 1 and counts.pop() > 500  # 140 req/s x 9 s
    assert all(len(out["served_by"][arm]) == 4 for arm in arms)  # four backends answered in every arm

    control = out["foresight"]
    assert control["rounds"] >= 5 and control["errors"] == []
    assert control["weight_changes"] > 0 and control["weight_failures"] == 0
    assert set(control["models"]) == {"weights", "risk"}  # and which model answered is said
    assert {s["weight"] for s in out["final_servers"]["foresight"].values()} != {"100"}  # HAProxy has them
    assert {s["weight"] for s in out["final_servers"]["leastconn"].values()} == {"100"}  # no controller there
    assert out["client"]["alone"]["requests"] > 0

    s = out["settings"]
    assert s["workers"] == [2, 4, 6, 8] and s["capacities_rps"] == [20.0, 40.0, 60.0, 80.0]
    assert s["fault_seed"] == 9001 and s["scenario"]["faults"]
    assert out["models"]["registry_versions"] == {"latency": [], "risk": []}
