"""The drain policy: thresholds with hysteresis, unknown is not healthy, guardrails, operator pins."""

from __future__ import annotations

import pytest

from infra.core.service_registry import InstanceRecord
from lb_adapters.policies.drain import DrainKnobs, DrainState, decide_drains


def rec(state: str = "ready", by: str | None = None, started: int = 1) -> InstanceRecord:
    meta = {"set_by": by} if by else {}
    return InstanceRecord(address="127.0.0.1", port=1000 + started, state=state, started_at=started,
                          metadata=meta)


FOUR = {f"i{k}": rec(started=k) for k in range(4)}
KNOBS = DrainKnobs(drain_above=0.8, readmit_below=0.3, readmit_after=2, max_drained_fraction=0.25)


def test_a_risky_instance_is_drained_and_a_quiet_one_is_not() -> None:
    decisions, _ = decide_drains({"i0": 0.9, "i1": 0.79, "i2": 0.1, "i3": 0.0}, FOUR, DrainState(), KNOBS)
    assert [(d.instance, d.action) for d in decisions] == [("i0", "drain")]
    assert "0.90" in decisions[0].reason


def test_max_drained_fraction_refuses_the_second_drain_riskiest_first() -> None:
    decisions, _ = decide_drains({"i0": 0.85, "i1": 0.95, "i2": 0.1, "i3": 0.1}, FOUR, DrainState(), KNOBS)
    assert [(d.instance, d.action) for d in decisions] == [("i1", "drain"), ("i0", "refuse")]
    assert "max_unavailable" in decisions[1].reason


def test_the_last_ready_instance_is_never_drained() -> None:
    two = {"a": rec(started=1), "b": rec(state="draining", by="controller", started=2)}
    decisions, _ = decide_drains({"a": 0.99, "b": 0.99}, two, DrainState(), DrainKnobs(max_drained_fraction=1.0))
    assert [(d.instance, d.action) for d in decisions] == [("a", "refuse")]
    assert "no ready instance" in decisions[0].reason


def test_unknown_risk_neither_drains_nor_counts_towards_readmission() -> None:
    records = {**FOUR, "i0": rec(state="draining", by="controller")}
    decisions, state = decide_drains({"i0": 0.1}, records, DrainState(), KNOBS)
    assert decisions == [] and state.healthy_streak == {"i0": 1}
    decisions, state = decide_drains({"i0": None}, records, state, KNOBS)  # no window this round
    assert decisions == [] and state.healthy_streak == {"i0": 0}
    decisions, state = decide_drains({"i0": 0.2}, records, state, KNOBS)
    assert decisions == []
    decisions, state = decide_drains({"i0": 0.2}, records, state, KNOBS)
    assert [(d.instance, d.action) for d in decisions] == [("i0", "readmit")]
    assert state.healthy_streak == {}


def test_hysteresis_a_risk_between_the_thresholds_keeps_the_drain() -> None:
    records = {**FOUR, "i0": rec(state="draining", by="controller")}
    state = DrainState()
    for _ in range(5):
        decisions, state = decide_drains({"i0": 0.5}, records, state, KNOBS)
        assert decisions == []


def test_an_operator_drain_is_never_undone_and_an_operator_ready_is_not_drained() -> None:
    records = {**FOUR, "i0": rec(state="draining", by="operator"), "i1": rec(state="ready", by="operator")}
    state = DrainState()
    for _ in range(3):
        decisions, state = decide_drains({"i0": 0.0, "i1": 0.99}, records, state, KNOBS)
        assert [(d.instance, d.action) for d in decisions] == [("i1", "refuse")]
    assert "operator" in decisions[0].reason


@pytest.mark.parametrize("kwargs", [{"drain_above": 0.3, "readmit_below": 0.3}, {"readmit_after": 0},
                                    {"drain_above": 1.2}])
def test_knobs_that_would_flap_or_never_act_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DrainKnobs(**kwargs)  # type: ignore[arg-type]


def test_no_drain_into_overload_when_capacity_is_known() -> None:
    knobs = DrainKnobs(capacity_rps=20, max_drained_fraction=0.5)
    risky = {"i0": 0.95, "i1": 0.1, "i2": 0.1, "i3": 0.1}
    decisions, _ = decide_drains(risky, FOUR, DrainState(), knobs, load_rps=70)  # 3 left x 20 < 70
    assert [(d.instance, d.action) for d in decisions] == [("i0", "refuse")]
    assert "overloaded" in decisions[0].reason
    decisions, _ = decide_drains(risky, FOUR, DrainState(), knobs, load_rps=52)  # 3 x 20 carries 52 x 1.15
    assert [(d.instance, d.action) for d in decisions] == [("i0", "drain")]
    decisions, _ = decide_drains(risky, FOUR, DrainState(), DrainKnobs(max_drained_fraction=0.5), load_rps=500)
    assert [(d.instance, d.action) for d in decisions] == [("i0", "drain")]  # capacity unknown: no guard


def test_after_a_drain_the_cooldown_holds_the_next_one() -> None:
    knobs = DrainKnobs(max_drained_fraction=1.0, cooldown_rounds=2)
    decisions, state = decide_drains({"i0": 0.9}, FOUR, DrainState(), knobs)
    assert [(d.instance, d.action) for d in decisions] == [("i0", "drain")] and state.cooldown == 2
    records = {**FOUR, "i0": rec(state="draining", by="controller")}
    decisions, state = decide_drains({"i1": 0.9}, records, state, knobs)
    assert [(d.instance, d.action) for d in decisions] == [("i1", "refuse")] and "cooldown" in decisions[0].reason
    decisions, state = decide_drains({"i1": 0.9}, records, state, knobs)
    assert [(d.instance, d.action) for d in decisions] == [("i1", "refuse")]
    decisions, state = decide_drains({"i1": 0.9}, records, state, knobs)
    assert [(d.instance, d.action) for d in decisions] == [("i1", "drain")]


# -- the overload guard with per-instance capacity (issue 15: unequal instances) ----------------------

UNEQUAL = {"b0": 20.0, "b1": 40.0, "b2": 60.0, "b3": 80.0}  # the bench's capacities, req/s
GUARD = DrainKnobs(max_drained_fraction=0.5, capacity_margin=1.1)
B4 = {f"b{k}": rec(started=k) for k in range(4)}


def test_a_drain_is_refused_when_the_rest_cannot_carry_the_load_and_the_instance_is_held() -> None:
    """Scenario 9000: b2 (60 req/s) fails under 140 req/s; b0 + b1 + b3 = 140 < 140 x 1.1."""
    decisions, state = decide_drains({"b2": 0.98}, B4, DrainState(), GUARD, load_rps=140, capacity=UNEQUAL)
    (d,) = decisions
    assert (d.instance, d.action) == ("b2", "refuse")
    assert d.hold_share == pytest.approx((140 - 140 / 1.1) / 140)  # what the rest cannot take at 1/1.1 busy
    assert "140 req/s" in d.reason and "low weight" in d.reason and "b3 80" in d.reason
    assert state.cooldown == 0  # nothing was drained


def test_a_drain_is_allowed_when_the_rest_have_the_capacity_with_the_margin() -> None:
    """Scenario 9001: b0 (20 req/s) fails; b1 + b2 + b3 = 180 >= 140 x 1.1."""
    decisions, _ = decide_drains({"b0": 0.98}, B4, DrainState(), GUARD, load_rps=140, capacity=UNEQUAL)
    (d,) = decisions
    assert (d.instance, d.action, d.hold_share) == ("b0", "drain", None)
    assert "180 req/s" in d.reason


@pytest.mark.parametrize(("load", "allowed"), [(127.0, True), (127.5, False)])
def test_the_bound_is_load_times_the_margin(load: float, allowed: bool) -> None:
    """140 req/s left carry 127.27 x 1.1: at the bound the drain passes, just above it is refused."""
    (d,) = decide_drains({"b2": 0.9}, B4, DrainState(), GUARD, load_rps=load, capacity=UNEQUAL)[0]
    assert (d.action == "drain") is allowed


def test_per_instance_estimates_win_over_the_uniform_fallback_which_fills_the_gaps() -> None:
    knobs = DrainKnobs(max_drained_fraction=0.5, capacity_rps=100.0)  # uniform alone: 300 left, would drain
    (d,) = decide_drains({"b2": 0.9}, B4, DrainState(), knobs, load_rps=140, capacity=UNEQUAL)[0]
    assert d.action == "refuse"
    (d,) = decide_drains({"b2": 0.9}, B4, DrainState(), knobs, load_rps=140,
                         capacity={"b0": 20.0, "b1": None, "b3": 80.0})[0]  # b1 unknown: 100 from the fallback
    assert d.action == "drain"


def test_an_unknown_capacity_or_load_leaves_the_overload_unchecked_and_says_so() -> None:
    (d,) = decide_drains({"b2": 0.9}, B4, DrainState(), GUARD, load_rps=140, capacity={"b0": 20.0})[0]
    assert d.action == "drain" and "unknown: overload not checked" in d.reason
    (d,) = decide_drains({"b2": 0.9}, B4, DrainState(), GUARD, load_rps=None, capacity=UNEQUAL)[0]
    assert d.action == "drain" and "load unknown" in d.reason


def test_the_guard_never_lets_the_last_instance_go_and_never_touches_an_operator_state() -> None:
    two = {"a": rec(started=1), "b": rec(state="draining", by="controller", started=2)}
    decisions, _ = decide_drains({"a": 0.99}, two, DrainState(), DrainKnobs(max_drained_fraction=1.0), load_rps=1,
                                 capacity={"a": 1000.0, "b": 1000.0})
    assert [(d.instance, d.action) for d in decisions] == [("a", "refuse")]
    assert "no ready instance" in decisions[0].reason
    pinned = {**B4, "b2": rec(state="ready", by="operator", started=2)}
    (d,) = decide_drains({"b2": 0.99}, pinned, DrainState(), GUARD, load_rps=1, capacity=UNEQUAL)[0]
    assert d.action == "refuse" and "operator" in d.reason and d.hold_share is None
    pinned = {**B4, "b2": rec(state="draining", by="operator", started=2)}  # an operator's drain stays
    assert decide_drains({"b2": 0.0}, pinned, DrainState(), GUARD, load_rps=500, capacity=UNEQUAL)[0] == []


def test_a_drained_instance_no_longer_counts_as_capacity_for_the_next() -> None:
    out = {**B4, "b3": rec(state="draining", by="controller", started=3)}
    knobs = DrainKnobs(max_drained_fraction=0.5)
    (d,) = decide_drains({"b0": 0.9}, out, DrainState(), knobs, load_rps=95, capacity=UNEQUAL)[0]
    assert d.action == "refuse" and "100 req/s" in d.reason  # b1 + b2 only; b3's 80 is out


def test_knobs_refuse_a_margin_below_one() -> None:
    with pytest.raises(ValueError):
        DrainKnobs(capacity_margin=0.9)


def test_a_hold_lasts_until_the_instance_is_healthy_for_readmit_after_rounds() -> None:
    """Held at a low weight, an erroring instance looks less risky; the hold must not lapse on that alone
    (bench lb scenario 9000: without this, b2 went back to its full share between refusals)."""
    knobs = DrainKnobs(max_drained_fraction=0.5, readmit_after=2)
    _, state = decide_drains({"b2": 0.98}, B4, DrainState(), knobs, load_rps=140, capacity=UNEQUAL)
    assert state.held == {"b2": 0}
    decisions, state = decide_drains({"b2": 0.6}, B4, state, knobs, load_rps=140, capacity=UNEQUAL)
    assert [(d.instance, d.action) for d in decisions] == [("b2", "hold")] and decisions[0].hold_share
    assert "not yet <= 0.3" in decisions[0].reason
    decisions, state = decide_drains({"b2": 0.1}, B4, state, knobs, load_rps=140, capacity=UNEQUAL)
    assert [d.action for d in decisions] == ["hold"] and state.held == {"b2": 1}
    decisions, state = decide_drains({"b2": 0.1}, B4, state, knobs, load_rps=140, capacity=UNEQUAL)
    assert decisions == [] and state.held == {}  # 2 healthy rounds: the hold is lifted


def test_once_the_others_can_carry_the_load_the_drain_a_hold_put_off_goes_ahead() -> None:
    """`bench lb` scenario 9001 with the live controller's round counts: b0's hold ended when its peers could
    carry the load, and b0 (risk 0.67, held at a low weight) took its full share again and answered 500s for
    11 s, until its risk reached the threshold again."""
    _, state = decide_drains({"b2": 0.98}, B4, DrainState(), GUARD, load_rps=140, capacity=UNEQUAL)
    decisions, state = decide_drains({"b2": 0.6}, B4, state, GUARD, load_rps=100, capacity=UNEQUAL)
    assert [(d.instance, d.action) for d in decisions] == [("b2", "drain")]
    assert "held for capacity, risk 0.60" in decisions[0].reason and decisions[0].hold_share is None
    assert state.held == {} and state.cooldown == GUARD.cooldown_rounds
    # through the same guardrails: with the budget used up it is refused, and tried again next round
    spent = {**B4, "b0": rec("draining", by="controller", started=0), "b1": rec("draining", by="controller")}
    _, state = decide_drains({"b2": 0.98}, B4, DrainState(), GUARD, load_rps=140, capacity=UNEQUAL)
    decisions, state = decide_drains({"b2": 0.6}, spent, state, GUARD, load_rps=10, capacity=UNEQUAL)
    assert [(d.instance, d.action) for d in decisions] == [("b2", "refuse")] and decisions[0].hold_share is None
    assert "held for capacity" in decisions[0].reason and state.held == {"b2": 0}
    freed = {**B4, "b0": rec("draining", by="controller", started=0)}
    decisions, state = decide_drains({"b2": 0.6}, freed, state, GUARD, load_rps=10, capacity=UNEQUAL)
    assert [(d.instance, d.action) for d in decisions] == [("b2", "drain")] and state.held == {}


def test_a_held_instance_healthy_for_readmit_after_rounds_is_not_drained_when_the_load_falls() -> None:
    knobs = DrainKnobs(max_drained_fraction=0.5, capacity_margin=1.1, readmit_after=2)
    _, state = decide_drains({"b2": 0.98}, B4, DrainState(), knobs, load_rps=140, capacity=UNEQUAL)
    _, state = decide_drains({"b2": 0.1}, B4, state, knobs, load_rps=140, capacity=UNEQUAL)
    assert state.held == {"b2": 1}
    decisions, state = decide_drains({"b2": 0.1}, B4, state, knobs, load_rps=100, capacity=UNEQUAL)
    assert decisions == [] and state.held == {}


def test_drain_after_needs_consecutive_risky_rounds_and_a_quiet_or_unknown_round_resets() -> None:
    knobs = DrainKnobs(drain_above=0.8, readmit_below=0.3, readmit_after=2, max_drained_fraction=0.25, drain_after=3)
    state = DrainState()
    actions = []
    for r in (0.9, 0.9, 0.5, 0.9, None, 0.9, 0.9, 0.9):  # streaks: 1, 2, reset, 1, reset, 1, 2, 3 -> drain
        decisions, state = decide_drains({"i0": r, "i1": 0.1, "i2": 0.1, "i3": 0.1}, FOUR, state, knobs)
        actions.append([d.action for d in decisions if d.instance == "i0"])
    assert actions == [[], [], [], [], [], [], [], ["drain"]]
    assert "for 3 rounds" in decide_drains({"i0": 0.9}, FOUR, DrainState(risky_streak={"i0": 2}), knobs)[0][0].reason
    assert "i0" not in state.risky_streak  # drained: its streak is done


def test_drain_after_of_one_is_the_old_single_round_rule_and_zero_is_refused() -> None:
    decisions, state = decide_drains({"i0": 0.9}, FOUR, DrainState(), KNOBS)
    assert [d.action for d in decisions] == ["drain"] and state.risky_streak == {}
    with pytest.raises(ValueError, match="drain_after"):
        DrainKnobs(drain_after=0)


def test_the_models_drain_point_replaces_the_threshold_and_counts_its_seconds_in_rounds() -> None:
    from lb_adapters.health import at_operating_point
    from serving.schemas import OperatingPoint

    base = DrainKnobs(drain_above=0.8, readmit_below=0.3, drain_after=1)
    knobs, said = at_operating_point(base, OperatingPoint(drain_above=0.7, sustained_s=12.0), 5.0)
    assert (knobs.drain_above, knobs.drain_after) == (0.7, 3)  # 12 s of windows: 3 rounds of 5 s
    assert "0.7" in said and "3 round" in said
    assert knobs.readmit_below == base.readmit_below and knobs.max_drained_fraction == base.max_drained_fraction
    assert at_operating_point(base, OperatingPoint(drain_above=0.9, sustained_s=0.0), 5.0)[0].drain_after == 1
    kept, said = at_operating_point(base, OperatingPoint(drain_above=0.2, sustained_s=4.0), 5.0)
    assert kept == base and "not above readmit_below" in said  # no hysteresis left: the settings drain


def test_a_drained_instance_waits_out_the_risk_horizon_before_readmission() -> None:
    """Drained, it gets no traffic and its risk reads low whether it is sick or not: the failure it was
    drained for comes within the horizon, so re-admission waits that long."""
    from infra.core.settings import HealthSettings
    from lb_adapters.policies.drain import health_knobs

    h = HealthSettings(interval_s=5.0, readmit_after=3, horizon_s=60.0)
    assert h.readmit_rounds(5.0) == 12  # 60 s of 5 s rounds, not 3 rounds (15 s)
    assert h.readmit_rounds(10.0) == 6  # in 10 s feature windows, as the held-out replay counts them
    assert HealthSettings(interval_s=5.0, readmit_after=20, horizon_s=60.0).readmit_rounds(5.0) == 20
    knobs = health_knobs(h)
    assert knobs.readmit_after == 12
    drained = {**FOUR, "i0": rec("draining", by="controller", started=0)}
    state = DrainState()
    for round_no in range(12):
        decisions, state = decide_drains({"i0": 0.0, "i1": 0.1, "i2": 0.1, "i3": 0.1}, drained, state, knobs)
        readmitted = [d.instance for d in decisions if d.action == "readmit"]
        assert readmitted == ([] if round_no < 11 else ["i0"])


def test_the_health_settings_give_every_caller_the_same_seconds() -> None:
    """The live controller counts rounds of `health.interval_s`; the risk replay, judging every window, keeps
    the same seconds (and `bench lb`, faster rounds on shorter windows, the same rounds)."""
    from infra.core.settings import HealthSettings
    from lb_adapters.policies.drain import health_knobs

    h = HealthSettings(interval_s=5.0, drain_after=2, cooldown_rounds=6, readmit_after=3, horizon_s=60.0,
                       capacity_rps=30.0, capacity_margin=1.3, min_utilisation=0.4)
    live = health_knobs(h)
    assert (live.drain_after, live.cooldown_rounds, live.readmit_after) == (2, 6, 12)
    assert (live.capacity_rps, live.capacity_margin, live.min_utilisation) == (30.0, 1.3, 0.4)
    per_window = health_knobs(h, 10.0)
    assert (per_window.drain_after, per_window.cooldown_rounds, per_window.readmit_after) == (1, 3, 6)
    per_second = health_knobs(h, 1.0)
    assert (per_second.drain_after, per_second.cooldown_rounds, per_second.readmit_after) == (10, 30, 60)
    assert per_second.drain_above == live.drain_above == h.drain_above


def test_a_hold_share_is_written_in_steps_rounded_up_as_the_registry_reads_it_back() -> None:
    from infra.core.service_registry import HOLD
    from lb_adapters.health import hold_step

    assert [hold_step(x) for x in (0.0001, 0.05, 0.051, 0.13, 0.15, 0.99, 1.0)] == [
        0.05, 0.05, 0.1, 0.15, 0.15, 1.0, 1.0]
    for share in (0.05, 0.15, 0.35, 0.7):
        stored = rec().model_copy(update={"metadata": {HOLD: f"{hold_step(share):g}"}})
        assert stored.hold_share == hold_step(share)  # equal: no write every round for the same step
    assert rec().hold_share is None
    assert rec().model_copy(update={"metadata": {HOLD: "lots"}}).hold_share is None
