"""Registry key layout and record parsing (infra/core/service_registry.py), without etcd."""

from __future__ import annotations

import pytest

from infra.core.service_registry import (
    InstanceRecord,
    instance_key,
    leader_key,
    normalise_prefix,
    parse_instance_key,
    parse_record,
)


def test_instance_key_round_trips_through_the_parser() -> None:
    key = instance_key("foresight/", "web", "web-1")
    assert key == "/foresight/services/web/instances/web-1"
    assert parse_instance_key("/foresight", key) == ("web", "web-1")


@pytest.mark.parametrize("key", ["/foresight/services/web", "/foresight/services/web/instances/",
                                 "/foresight/services/web/other/a", "/elsewhere/services/web/instances/a",
                                 "/foresight/services/web/instances/a/b", "/foresight/leaders/web"])
def test_other_keys_are_not_instance_keys(key: str) -> None:
    assert parse_instance_key("/foresight", key) is None


@pytest.mark.parametrize(("service", "instance"), [("", "a"), ("web", ""), ("a/b", "x"), ("web", "x/y"), ("web", " a")])
def test_names_with_slashes_or_empty_are_refused(service: str, instance: str) -> None:
    with pytest.raises(ValueError, match="name"):
        instance_key("/p", service, instance)


def test_prefix_is_normalised_and_not_empty() -> None:
    assert normalise_prefix("  /a/b/ ") == "/a/b"
    assert leader_key("/a", "web") == "/a/leaders/web"
    assert leader_key("/a", "web", "weights") == "/a/leaders/web/weights"
    with pytest.raises(ValueError, match="prefix"):
        normalise_prefix("/")


def test_parse_record_accepts_a_record_and_explains_a_bad_one() -> None:
    good = InstanceRecord(address="h", port=1, started_at=0, metadata={"k": "v"})
    assert parse_record(good.to_json()) == (good, None)
    record, error = parse_record(b'{"address": "h", "port": 0, "started_at": 0, "weight": 300}')
    assert record is None and error is not None and "port" in error and "weight" in error
