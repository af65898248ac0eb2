"""Operator changes to the registry (`foresight registry drain|undrain|deregister`): each one checked
by the membership guardrails, applied as a compare-and-set transaction, and recorded as a Decision."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel

from infra.core.service_registry import InstanceRecord, InstanceState, Registry, RegistryEntry
from lb_adapters.policies.membership import Verdict, check_drain, check_remove
from lb_adapters.schemas import Decision, DecisionSink

AdminAction = Literal["drain", "undrain", "deregister"]
CAS_TRIES = 5


class AdminRefused(Exception):
    """A guardrail refused the change (CLI exit status 2)."""


class AdminNotFound(LookupError):
    """No such instance key."""


class DecisionNotRecorded(RuntimeError):
    """The change was applied but its decision could not be published."""


def _record(sink: DecisionSink, decision: Decision) -> None:
    try:
        sink.publish([decision])
    except Exception as exc:  # the sink's failure, whatever its client raises
        raise DecisionNotRecorded(f"{decision.target}: {decision.action} applied, but its decision could not be "
                                  f"recorded ({str(exc) or type(exc).__name__})") from exc


class AdminResult(BaseModel):
    service: str
    instance: str
    action: AdminAction
    before: str
    after: str
    changed: bool
    message: str


def _records(registry: Registry, service: str) -> tuple[dict[str, RegistryEntry], dict[str, InstanceRecord]]:
    entries = {e.instance: e for e in registry.list(service)}
    return entries, {name: e.record for name, e in entries.items() if e.record is not None}


def _decision(service: str, instance: str, action: AdminAction, before: str, after: str, why: str) -> Decision:
    return Decision(ts=int(time.time() * 1000), service=service, actuator="etcd", target=f"{service}/{instance}",
                    action=action, before=None, after=None, reason=f"operator: {before} -> {after}; {why}",
                    prediction_ref="operator", outcome="applied")


def change_state(registry: Registry, sink: DecisionSink, service: str, instance: str, action: AdminAction,
                 max_unavailable: float) -> AdminResult:
    """Drain or undrain one instance (set_by=operator), retrying when another writer got there first."""
    target: InstanceState = "draining" if action == "drain" else "ready"
    for _ in range(CAS_TRIES):
        entries, records = _records(registry, service)
        entry = entries.get(instance)
        if entry is None:
            raise AdminNotFound(f"no instance {service}/{instance} in the registry (see `foresight registry list`)")
        if entry.record is None:
            raise AdminRefused(f"{service}/{instance} holds an invalid value ({entry.error}); "
                               "`foresight registry deregister` it")
        before = entry.record.state
        if before == target or (action == "drain" and before == "drained"):
            return AdminResult(service=service, instance=instance, action=action, before=before, after=before,
                               changed=False, message=f"{service}/{instance} is already {before}")
        verdict = check_drain(records, [instance], max_unavailable) if action == "drain" else \
            Verdict(True, "back in service")
        if not verdict.allowed:
            raise AdminRefused(f"{service}/{instance}: {verdict.reason}")
        if registry.set_state(service, instance, target, entry.mod_revision, set_by="operator"):
            _record(sink, _decision(service, instance, action, before, target, verdict.reason))
            return AdminResult(service=service, instance=instance, action=action, before=before, after=target,
                               changed=True, message=f"{service}/{instance}: {before} -> {target}")
    raise AdminRefused(f"{service}/{instance} kept changing under us ({CAS_TRIES} tries); try again")


def deregister(registry: Registry, sink: DecisionSink, service: str, instance: str,
               max_unavailable: float) -> AdminResult:
    """Delete one instance key, unless that removes the last ready instance (or past max_unavailable)."""
    for _ in range(CAS_TRIES):
        entries, records = _records(registry, service)
        entry = entries.get(instance)
        if entry is None:
            raise AdminNotFound(f"no instance {service}/{instance} in the registry (see `foresight registry list`)")
        before = entry.record.state if entry.record is not None else "invalid"
        verdict = check_remove(records, [instance], max_unavailable) if entry.record is not None else \
            Verdict(True, f"invalid value: {entry.error}")
        if not verdict.allowed:
            raise AdminRefused(f"{service}/{instance}: {verdict.reason}")
        if registry.deregister(service, instance, expect_mod_revision=entry.mod_revision):
            _record(sink, _decision(service, instance, "deregister", before, "removed", verdict.reason))
            return AdminResult(service=service, instance=instance, action="deregister", before=before,
                               after="removed", changed=True, message=f"{service}/{instance}: {before} -> removed")
    raise AdminRefused(f"{service}/{instance} kept changing under us ({CAS_TRIES} tries); try again")
