"""The sync's pure plan: diffs that turn one membership into another, nginx upstream rendering,
and the registry view (fail-static: a lost watch or an invalid value never removes a server)."""

from __future__ import annotations

from infra.core.service_registry import InstanceRecord, RegistryEntry, Snapshot, WatchEvent
from lb_adapters.sync.plan import Member, diff, haproxy_weight, render_nginx_upstreams, server_name
from lb_adapters.sync.view import RegistryView


def m(name: str, port: int = 1000, weight: int = 100, state: str = "ready", address: str = "127.0.0.1") -> Member:
    return Member(instance=name, address=address, port=port, weight=weight, state=state)


def actions(changes: list) -> list[tuple[str, str]]:
    return [(c.action, c.instance) for c in changes]


def test_diff_adds_first_and_removes_last() -> None:
    applied = {"a": m("a"), "b": m("b")}
    desired = {"a": m("a"), "c": m("c")}
    assert actions(diff(applied, desired)) == [("add_server", "c"), ("remove", "b")]


def test_diff_same_membership_is_no_change() -> None:
    members = {"a": m("a"), "b": m("b", state="draining")}
    assert diff(members, dict(members)) == []


def test_diff_state_and_weight_changes() -> None:
    applied = {"a": m("a"), "b": m("b"), "c": m("c", state="draining")}
    desired = {"a": m("a", weight=50), "b": m("b", state="draining"), "c": m("c")}
    assert actions(diff(applied, desired)) == [("set_weight", "a"), ("undrain", "c"), ("drain", "b")]
    assert actions(diff({"a": m("a")}, {"a": m("a", state="drained")})) == [("maint", "a")]


def test_diff_moved_server_is_removed_then_added() -> None:
    assert actions(diff({"a": m("a", port=1)}, {"a": m("a", port=2)})) == [("remove", "a"), ("add_server", "a")]


def test_diff_new_server_in_a_non_ready_state_is_added_then_set() -> None:
    assert actions(diff({}, {"a": m("a", state="draining")})) == [("add_server", "a"), ("drain", "a")]


def test_render_nginx_marks_drained_and_zero_weight_down() -> None:
    text = render_nginx_upstreams({"web": {"a": m("a", port=1), "b": m("b", port=2, state="draining"),
                                           "c": m("c", port=3, weight=0)}})
    assert "upstream svc_web {" in text
    assert "server 127.0.0.1:1 weight=100;" in text
    assert "server 127.0.0.1:2 weight=100 down;" in text
    assert "server 127.0.0.1:3 weight=1 down;" in text


def test_render_nginx_empty_service_has_a_down_placeholder() -> None:
    text = render_nginx_upstreams({"web": {}})
    assert "down;" in text and "upstream svc_web" in text


def test_server_name_and_weight_bounds() -> None:
    assert server_name("web 1/x") == "web_1_x"
    assert haproxy_weight(999) == 256 and haproxy_weight(-3) == 0


def entry(name: str, port: int = 1000, rev: int = 1, error: str | None = None, service: str = "web") -> RegistryEntry:
    record = None if error else InstanceRecord(address="127.0.0.1", port=port, started_at=0)
    return RegistryEntry(service, name, record, error, rev)


def test_view_ignores_nothing_before_the_first_snapshot_and_keeps_membership_when_lost() -> None:
    view = RegistryView(["web"])
    assert not view.synced
    assert view.apply(WatchEvent("resync", 5, snapshot=Snapshot([entry("a")], 5))) == {"web"}
    assert view.synced and set(view.members["web"]) == {"a"}
    assert view.apply(WatchEvent("lost", 5, reason="down")) == set()
    assert set(view.members["web"]) == {"a"} and not view.connected


def test_view_invalid_value_over_a_healthy_key_keeps_the_server_and_counts() -> None:
    view = RegistryView(["web"])
    view.apply(WatchEvent("resync", 1, snapshot=Snapshot([entry("a", port=1)], 1)))
    assert view.apply(WatchEvent("put", 2, entry=entry("a", rev=2, error="not JSON"))) == set()
    assert view.apply(WatchEvent("put", 3, entry=entry("z", rev=3, error="port: too big"))) == set()
    assert view.members["web"]["a"].port == 1 and "z" not in view.members["web"]
    assert view.invalid["web"] == 2
    # and a resync that still finds garbage there keeps it too
    view.apply(WatchEvent("resync", 4, snapshot=Snapshot([entry("a", rev=2, error="not JSON")], 4)))
    assert view.members["web"]["a"].port == 1 and view.invalid["web"] == 3


def test_view_delete_and_other_services() -> None:
    view = RegistryView(["web"])
    view.apply(WatchEvent("resync", 1, snapshot=Snapshot([entry("a"), entry("q", service="other")], 1)))
    assert set(view.members) == {"web"}
    assert view.apply(WatchEvent("put", 2, entry=entry("b", rev=2))) == {"web"}
    assert view.apply(WatchEvent("put", 3, entry=entry("b", rev=3))) == set()  # same value: nothing to do
    assert view.apply(WatchEvent("delete", 4, entry=RegistryEntry("web", "a", None, None, 4))) == {"web"}
    assert set(view.members["web"]) == {"b"}


def test_view_knows_which_keys_hold_garbage_until_fixed_or_deleted() -> None:
    view = RegistryView(["web"])
    view.apply(WatchEvent("resync", 1, snapshot=Snapshot([entry("a", rev=1, error="not JSON")], 1)))
    assert view.unknown["web"] == {"a"} and view.members["web"] == {}  # a fresh sync: nothing to keep, nothing known
    assert view.apply(WatchEvent("put", 2, entry=entry("a", rev=2))) == {"web"}
    assert view.unknown["web"] == set() and "a" in view.members["web"]
    view.apply(WatchEvent("put", 3, entry=entry("b", rev=3, error="port")))
    assert view.apply(WatchEvent("delete", 4, entry=RegistryEntry("web", "b", None, None, 4))) == {"web"}
    assert view.unknown["web"] == set()
