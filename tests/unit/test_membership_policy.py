"""Membership guardrails and registry-value validation (lb_adapters/policies/membership.py)."""

from __future__ import annotations

import pytest

from infra.core.service_registry import InstanceRecord, RegistryEntry, parse_record
from lb_adapters.policies.membership import (
    apply_change,
    check_drain,
    check_remove,
    choose_victims,
    may_change_state,
    membership_from_entries,
    unavailable_budget,
)


def rec(state: str = "ready", started_at: int = 1, set_by: str | None = None, port: int = 8000) -> InstanceRecord:
    meta = {"set_by": set_by} if set_by else {}
    return InstanceRecord(address="127.0.0.1", port=port, state=state, started_at=started_at, metadata=meta)


def pool(*states: str) -> dict[str, InstanceRecord]:
    return {f"i{n}": rec(state, started_at=n) for n, state in enumerate(states)}


@pytest.mark.parametrize(("total", "share", "budget"), [(1, 0.25, 1), (4, 0.25, 1), (8, 0.25, 2), (10, 0.25, 2),
                                                        (3, 0.5, 1), (4, 0.5, 2), (4, 1.0, 4)])
def test_unavailable_budget_is_a_floor_of_the_share_and_at_least_one(total: int, share: float, budget: int) -> None:
    assert unavailable_budget(total, share) == budget


def test_unavailable_budget_rejects_a_share_outside_0_1() -> None:
    with pytest.raises(ValueError, match="max_unavailable"):
        unavailable_budget(4, 0)


def test_draining_the_last_ready_instance_is_refused() -> None:
    verdict = check_drain(pool("ready", "drained"), ["i0"], max_unavailable=1.0)
    assert not verdict.allowed and "no ready instance" in verdict.reason


def test_draining_the_only_instance_is_refused_even_with_a_budget_of_one() -> None:
    assert not check_drain(pool("ready"), ["i0"], 0.25).allowed


def test_removing_the_last_ready_instance_is_refused() -> None:
    verdict = check_remove(pool("ready", "draining"), ["i0"], 1.0)
    assert not verdict.allowed and "no ready instance" in verdict.reason


def test_draining_past_max_unavailable_is_refused() -> None:
    records = pool("ready", "ready", "ready", "draining")  # 1 of 4 already out; budget 1
    verdict = check_drain(records, ["i0"], 0.25)
    assert not verdict.allowed and "max_unavailable" in verdict.reason
    assert check_drain(pool("ready", "ready", "ready", "ready"), ["i0"], 0.25).allowed
    assert not check_drain(pool("ready", "ready", "ready", "ready"), ["i0", "i1"], 0.25).allowed
    assert check_drain(pool("ready", "ready", "ready", "ready"), ["i0", "i1"], 0.5).allowed


def test_removing_an_instance_already_out_of_service_is_allowed_past_the_budget() -> None:
    records = pool("ready", "draining", "drained")  # 2 of 3 out, budget 1
    assert check_remove(records, ["i1", "i2"], 0.25).allowed
    assert not check_remove(records, ["i0"], 0.25).allowed


def test_unknown_victims_are_refused() -> None:
    verdict = check_drain(pool("ready", "ready"), ["nope"], 0.5)
    assert not verdict.allowed and "nope" in verdict.reason


def test_a_controller_never_undoes_an_operator_state_but_an_operator_may() -> None:
    pinned = rec("draining", set_by="operator")
    assert not may_change_state(pinned, "ready", "controller").allowed
    assert may_change_state(pinned, "ready", "operator").allowed
    assert may_change_state(rec("draining", set_by="controller"), "ready", "controller").allowed
    assert may_change_state(pinned, "draining", "controller").allowed  # no change is no undo
    assert may_change_state(pinned, "drained", "controller").allowed  # completing the operator's drain
    assert not may_change_state(rec("drained", set_by="operator"), "ready", "controller").allowed
    assert not may_change_state(rec("ready", set_by="operator"), "draining", "controller").allowed


def test_choose_victims_takes_newest_unpinned_ready_within_the_budget() -> None:
    records = {"old": rec(started_at=1), "mid": rec(started_at=2), "new": rec(started_at=3, set_by="operator"),
               "gone": rec("drained", started_at=4), "x": rec(started_at=0), "y": rec(started_at=0),
               "z": rec(started_at=0), "w": rec(started_at=0)}  # 8 instances, 25% -> 2, one already out
    assert choose_victims(records, 3, 0.25) == ["mid"]
    assert choose_victims({"a": rec()}, 1, 1.0) == []


def entry(instance: str, raw: bytes, rev: int = 5, service: str = "web") -> RegistryEntry:
    record, error = parse_record(raw)
    return RegistryEntry(service, instance, record, error, rev)


GOOD = rec().model_dump_json().encode()


@pytest.mark.parametrize(("raw", "why"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"address": "127.0.0.1", "started_at": 1}', "port"),
    (b'{"address": "127.0.0.1", "port": 70000, "started_at": 1}', "port"),
    (b'{"address": "127.0.0.1", "port": 80, "started_at": 1, "state": "gone"}', "state"),
    (b'{"address": "127.0.0.1", "port": 80, "started_at": 1, "extra": 1}', "extra"),
])
def test_invalid_values_are_rejected_with_their_reason(raw: bytes, why: str) -> None:
    membership, rejects = membership_from_entries([entry("bad", raw), entry("ok", GOOD)])
    assert list(membership["web"]) == ["ok"]
    assert len(rejects) == 1 and rejects[0].instance == "bad" and why in rejects[0].reason


def test_a_garbage_value_over_a_known_instance_keeps_the_last_valid_record() -> None:
    before, _ = membership_from_entries([entry("a", GOOD)])
    after, rejects = membership_from_entries([entry("a", b"garbage")], previous=before)
    assert after["web"]["a"] == before["web"]["a"] and len(rejects) == 1
    changed, bad = apply_change(before, "put", entry("a", b"garbage"))
    assert changed == before and bad is not None and "not JSON" in bad.reason


def test_apply_change_puts_and_deletes() -> None:
    membership, bad = apply_change({}, "put", entry("a", GOOD))
    assert bad is None and list(membership["web"]) == ["a"]
    gone, _ = apply_change(membership, "delete", RegistryEntry("web", "a", None, None, 9))
    assert gone == {} and membership["web"]  # the input is not mutated
