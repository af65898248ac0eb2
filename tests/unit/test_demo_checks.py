"""The demo's verdicts: read from its figures, printed with them."""

from rich.console import Console

from infra.cli import _print_demo_checks
from infra.closed_loop import LoopSummary, demo_checks


def test_the_headline_needs_both_the_slo_and_fewer_replica_seconds() -> None:
    # the fresh-clone run of the README: short 6 s of 2.4 allowed, 2,136 replica-seconds against 2,041
    c = demo_checks({"predictive": 6.0, "hpa_shadow": 55.0}, {"predictive": 2136, "hpa_shadow": 2041}, 2.4, 44.5, True)
    assert c == {"predictive_within_slo": False, "hpa_shadow_within_slo": False,
                 "predictive_cheaper_than_hpa_shadow": False, "predictive_meets_slo_cheaper_than_hpa": False,
                 "drained_before_failure": True}
    cheaper_only = demo_checks({"predictive": 6.0, "hpa_shadow": 55.0}, {"predictive": 2000, "hpa_shadow": 2041},
                               2.4, 1.0, True)
    assert cheaper_only["predictive_cheaper_than_hpa_shadow"]
    assert not cheaper_only["predictive_meets_slo_cheaper_than_hpa"]
    both = demo_checks({"predictive": 2.4, "hpa_shadow": 55.0}, {"predictive": 2000, "hpa_shadow": 2041}, 2.4, 1.0,
                       True)
    assert both["predictive_within_slo"] and both["predictive_meets_slo_cheaper_than_hpa"]


def test_what_the_demo_did_not_measure_is_unknown_not_false() -> None:
    c = demo_checks({"predictive": 0.0, "hpa_shadow": None}, {"predictive": 900, "hpa_shadow": None}, 2.4, None, True)
    assert c["predictive_within_slo"] is True
    assert c["hpa_shadow_within_slo"] is None
    assert c["predictive_cheaper_than_hpa_shadow"] is None and c["predictive_meets_slo_cheaper_than_hpa"] is None
    assert c["drained_before_failure"] is None  # a fault, but no drain on record
    assert demo_checks({}, {}, 2.4, None, False)["drained_before_failure"] is None
    # drained after the failure: a lead of 0 or less is a miss
    assert demo_checks({}, {}, 2.4, -3.0, True)["drained_before_failure"] is False


def test_drained_before_the_crash_but_after_its_clients_saw_errors_is_a_miss() -> None:
    # the fresh clone's run: drained 9.3 s before the crash, while requests sent ~15 s before the drain timed out
    assert demo_checks({}, {}, 2.4, 9.3, True, -15.2)["drained_before_failure"] is False
    assert demo_checks({}, {}, 2.4, 29.3, True, 12.0)["drained_before_failure"] is True
    assert demo_checks({}, {}, 2.4, 29.3, True, None)["drained_before_failure"] is True  # no client error at all


def test_the_printed_verdicts_carry_their_figures() -> None:
    under = {"predictive": 6.0, "hpa_shadow": 55.0}
    rs: dict[str, float | None] = {"predictive": 2136, "hpa_shadow": 2041, "oracle": 1380}
    summary = LoopSummary(wall_s=480.0, underprov_s=under, replica_seconds=rs, client_p99_ms=1900.0,
                          client_error_pct=0.0, drain_lead_s=44.5, decisions=500, report="r.html", notes=[],
                          slo_allowed_s=2.4, checks=demo_checks(under, rs, 2.4, 44.5, True))
    out = Console(record=True, width=200)
    _print_demo_checks(out, summary)
    text = out.export_text()
    assert "at most 2.4 s of 480 s): predictive no (6.0 s), shadow HPA no (55.0 s)" in text
    assert "cheaper than the shadow HPA: no (1.05 x its replica-seconds); within the SLO and cheaper: no" in text
    assert "drained before it failed: yes (44.5 s before its crash, no client error before it)" in text
    late = summary.model_copy(update={"drain_lead_s": 9.3, "drain_before_errors_s": -15.2,
                                      "checks": demo_checks(under, rs, 2.4, 9.3, True, -15.2)})
    out = Console(record=True, width=200)
    _print_demo_checks(out, late)
    assert "drained before it failed: no (9.3 s before its crash, 15.2 s after its first failed request)" in (
        out.export_text())
    assert '"checks"' in summary.model_dump_json()
