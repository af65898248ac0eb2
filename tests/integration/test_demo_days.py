"""`foresight demo-days` end to end on the NASA trace, one day before the slice (no server; ~15 s of CPU)."""

import json

from tests.integration.conftest import foresight


def test_demo_days_replays_every_variant_on_a_weekday_before_the_slice_and_on_the_slice() -> None:
    proc = foresight("demo-days", "--days", "1", "--json", timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the demo's slice is a Monday: the weekday before it is the Friday, 3 days earlier
    assert result["days"] == [result["slice_first_minute"] - 3 * 1440]
    scores, own = result["scores"], result["demo_slice"]
    assert set(scores) == set(own)
    assert "predictive q0.99 +10% (the demo's)" in scores and "hpa 0.8 (the shadow's)" in scores
    assert result["slo_pct"] == 0.5 and result["startup_s"] == 20  # the demo service's startup_delay_s
    for table in (scores, own):
        hpa = [table[f"hpa {t:g}" + (" (the shadow's)" if t == 0.8 else "")]["replica_seconds"]
               for t in (0.8, 0.6, 0.4, 0.3)]
        assert hpa == sorted(hpa) and hpa[0] < hpa[-1]  # a lower target runs more replicas
        assert table["predictive q0.9 +0%"]["replica_seconds"] <= table["predictive q0.9 +20%"]["replica_seconds"]
        assert table["hpa 0.8 (the shadow's)"]["vs_hpa_usual"] == 1.0
        for v in table.values():
            assert 0 <= v["underprov_pct"] <= 100 and v["days"] == 1
    day = str(result["days"][0])
    assert set(result["per_day"]) == {day, str(result["slice_first_minute"])}
    rs, under = result["per_day"][day]["hpa 0.5"]
    beyond = result["beyond_reach_s"][day]
    assert scores["hpa 0.5"]["replica_seconds"] == rs
    assert scores["hpa 0.5"]["underprov_pct"] == round(100 * (under - beyond) / (480 - beyond), 3)


def test_demo_days_replays_with_another_startup_when_asked() -> None:
    proc = foresight("demo-days", "--days", "1", "--startup", "5", "--json", timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["startup_s"] == 5
    assert "instances start in 5 s" in proc.stdout
    assert foresight("demo-days", "--startup", "-1", check=False).returncode == 2  # refused, with typer's message
