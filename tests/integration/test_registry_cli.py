"""`foresight registry ...` as a user runs it (subprocesses), against the stack's etcd and Kafka:
guardrail refusals exit 2 and change nothing; each change is one decision on the decisions topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic

from infra.core.service_registry import InstanceRecord, Registry
from tests.integration.test_service_registry import etcd_url  # noqa: F401 - fixture

KAFKA = "127.0.0.1:19092"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(etcd_url: str) -> Iterator[dict[str, str]]:  # noqa: F811 - the imported fixture
    suffix = uuid.uuid4().hex[:10]
    topic = f"fs.test.decisions.{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=KAFKA, client_id="registry-cli-test")
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    probe = KafkaConsumer(bootstrap_servers=KAFKA)
    try:  # a new topic takes a moment to have a leader; a producer sooner would time out
        deadline = time.monotonic() + 20
        while not probe.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        probe.close()
    reg = Registry(etcd_url, f"/fs-cli-{suffix}")
    values = {**os.environ, "PYTHONPATH": str(ROOT), "FORESIGHT_REGISTRY__ENDPOINT": etcd_url,
              "FORESIGHT_REGISTRY__PREFIX": reg.prefix, "FORESIGHT_KAFKA__BOOTSTRAP_SERVERS": KAFKA,
              "FORESIGHT_KAFKA__TOPIC_DECISIONS": topic}
    values.pop("FORESIGHT_CONFIG", None)
    try:
        yield values
    finally:
        for entry in reg.list():
            reg.deregister(entry.service, entry.instance)
        reg.close()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.cli", "registry", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def decisions(env: dict[str, str], at_least: int) -> list[dict[str, object]]:
    consumer = KafkaConsumer(env["FORESIGHT_KAFKA__TOPIC_DECISIONS"], bootstrap_servers=KAFKA,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=2000)
    found: list[dict[str, object]] = []
    deadline = time.monotonic() + 20
    try:
        while True:  # read at least once (until 2 s without a message), then until `at_least` arrived
            found += [json.loads(m.value) for m in consumer]
            if len(found) >= at_least or time.monotonic() > deadline:
                break
    finally:
        consumer.close()
    return found


def register(env: dict[str, str], *names: str) -> Registry:
    reg = Registry(env["FORESIGHT_REGISTRY__ENDPOINT"], env["FORESIGHT_REGISTRY__PREFIX"])
    for n, name in enumerate(names):
        reg.register("web", name, InstanceRecord(address="127.0.0.1", port=9000 + n, started_at=n), ttl_s=60)
    return reg


def test_draining_the_last_ready_instance_exits_2_and_changes_nothing(env: dict[str, str]) -> None:
    reg = register(env, "a", "b")
    first = cli(env, "drain", "web", "a", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["after"] == "draining"
    refused = cli(env, "drain", "web", "b")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no ready instance" in refused.stderr
    removed = cli(env, "deregister", "web", "b", "--json")
    assert removed.returncode == 2 and json.loads(removed.stdout)["changed"] is False
    b = reg.get("web", "b")
    assert b is not None and b.record is not None and b.record.state == "ready"
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert {i["instance"]: i["record"]["state"] for i in listed["instances"]} == {"a": "draining", "b": "ready"}


def test_each_change_is_one_decision_with_before_and_after_in_its_reason(env: dict[str, str]) -> None:
    reg = register(env, "a", "b")
    assert cli(env, "drain", "web", "a").returncode == 0
    assert cli(env, "drain", "web", "a").returncode == 0  # already draining: nothing to do, no decision
    assert cli(env, "undrain", "web", "a").returncode == 0
    assert cli(env, "drain", "web", "a").returncode == 0
    assert cli(env, "deregister", "web", "a").returncode == 0
    assert reg.get("web", "a") is None
    found = decisions(env, at_least=4)
    assert [(d["action"], d["target"], d["actuator"], d["before"], d["after"]) for d in found] == [
        ("drain", "web/a", "etcd", None, None), ("undrain", "web/a", "etcd", None, None),
        ("drain", "web/a", "etcd", None, None), ("deregister", "web/a", "etcd", None, None)]
    assert "ready -> draining" in str(found[0]["reason"]) and "draining -> removed" in str(found[3]["reason"])


def test_show_and_unknown_instances(env: dict[str, str]) -> None:
    register(env, "a")
    shown = cli(env, "show", "web", "a", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["record"]["port"] == 9000
    missing = cli(env, "drain", "web", "nope")
    assert missing.returncode == 1 and "no instance web/nope" in missing.stderr


def test_adapt_stands_by_while_another_copy_leads_the_service(env: dict[str, str]) -> None:
    from infra.core.service_registry import Leadership

    reg = Registry(env["FORESIGHT_REGISTRY__ENDPOINT"], env["FORESIGHT_REGISTRY__PREFIX"])
    other = Leadership(reg, "demo", "the-other-copy", ttl_s=2, role="weights")
    membership = Leadership(reg, "demo", "a-membership-controller", ttl_s=2, role="registry-sync")
    assert membership.acquire(timeout=5)  # another kind of controller: a separate election
    assert other.acquire(timeout=5)
    try:
        proc = subprocess.run([sys.executable, "-m", "infra.cli", "adapt", "--once", "--service", "demo"],
                              capture_output=True, text=True, env={**env, "FORESIGHT_REGISTRY__LEADER_TTL_S": "2"},
                              cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "standing by" in proc.stderr and "the-other-copy" in proc.stderr
        assert other.check()  # still ours: the standby did not take the key
        assert membership.check()
        leaders = json.loads(cli(env, "leaders", "--json").stdout)
        assert sorted((i["service"], i["role"], i["holder"]) for i in leaders) == [
            ("demo", "registry-sync", "a-membership-controller"), ("demo", "weights", "the-other-copy")]
    finally:
        other.resign()
        membership.resign()
        reg.close()
    assert decisions(env, at_least=0) == []
