"""`foresight bench registry`: how fast balancer membership follows the registry, on a private rig
(etcd, HAProxy, nginx, the pool, registry-sync on free ports; the shared stack is not touched).

- register -> routed: the pool scales 1 -> 1+`grow` -> 1, `rounds` times, while one client loop
  sends through HAProxy and another through nginx; for each new instance, from its key's first
  `put` (seen by a watch) to the first response it served through each balancer. p99 (nearest
  rank) per balancer. Targets: HAProxy <= 1 s, nginx <= 2 s.
- drain -> idle: on each scale-down, from the victim's `draining` put to the last response it served
  through either balancer (0 when nothing came after). Client failures over the whole run reported.
- changes/s: `burst` instance keys (one shared lease, all pointing at one live instance) written as
  fast as etcd takes them, then the lease revoked; HAProxy's server count is polled every 10 ms and
  the rate is 2 x burst / (time until all were added + time until all were removed). Target >= 50/s.
- optional etcd outage (`etcd_outage_s`): etcd stopped that long; whether HAProxy's and nginx's
  membership stayed the same throughout, and how long the sync took to apply a change made after.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from infra.benches.registry_rig import ClientLoop, RegistryClock, Rig, rig_settings, wait_until
from infra.benches.streams import percentile
from infra.stack.probes import http_ok
from lb_adapters.actuators.haproxy import HAProxyRuntime

Say = Callable[[str], None]


def run_registry_bench(folder: Path, rounds: int = 2, grow: int = 3, burst: int = 200, etcd_outage_s: float = 0.0,
                       say: Say = print) -> dict[str, object]:
    rig = Rig(rig_settings(folder))
    haproxy = HAProxyRuntime(rig.s.haproxy_runtime)
    service = rig.svc.name

    def servers() -> dict[str, tuple[str, int, int, int]]:
        return haproxy.servers(service)

    try:
        rig.ensure_decisions_topic()
        rig.ensure_database()
        rig.start("etcd", "haproxy", "nginx", "pool", "registry-sync")
        wait_until("the first instance", lambda: rig.pool_status()["ready"] == 1 and len(servers()) == 1, 60)
        # and served through nginx by its only worker: until the reload ends, the old one (empty upstream)
        # still takes connections and answers 502, which the client failures would count
        wait_until("nginx serving it", lambda: http_ok(rig.nginx_url)() and rig.nginx_settled(), 30)
        clock = RegistryClock(rig.s, service)
        via_h, via_n = ClientLoop(rig.haproxy_url).start(), ClientLoop(rig.nginx_url).start()
        new: set[str] = set()
        for r in range(rounds):
            say(f"round {r + 1}/{rounds}: scale 1 -> {1 + grow} -> 1")
            before = {i["instance"] for i in rig.pool_status()["instances"]}  # type: ignore[attr-defined]
            rig.scale(1 + grow)
            wait_until("scale up", lambda: rig.pool_status()["ready"] == 1 + grow, 120)
            added = {i["instance"] for i in rig.pool_status()["instances"]} - before  # type: ignore[attr-defined]
            wait_until("traffic on every new instance",
                       lambda: added <= set(via_h.first_seen) and added <= set(via_n.first_seen), 30)  # noqa: B023
            new |= added
            rig.scale(1)
            wait_until("scale down", lambda: rig.pool_status()["current"] == 1 and len(servers()) == 1, 120)
        time.sleep(0.5)
        via_h.stop()
        via_n.stop()
        h_lat = [via_h.first_seen[n] - clock.registered[n] for n in new]
        n_lat = [via_n.first_seen[n] - clock.registered[n] for n in new]
        drains = []
        for (name, state), at in clock.state_at.items():
            if state == "draining":
                last = max(via_h.last_seen.get(name, 0.0), via_n.last_seen.get(name, 0.0))
                drains.append(max(0.0, last - at))
        clock.close()

        say(f"burst of {burst} registrations, then their removal")
        survivor = next(iter(servers().values()))
        changes_per_s, add_s, remove_s = _burst(rig, servers, burst, survivor[1])

        outage: dict[str, object] = {}
        if etcd_outage_s > 0:
            say(f"etcd stopped for {etcd_outage_s:g} s")
            outage = _outage(rig, servers, etcd_outage_s)

        return {
            "register_to_routed_p99_s": round(percentile(h_lat, 0.99), 3),
            "nginx_register_to_routed_p99_s": round(percentile(n_lat, 0.99), 3),
            "drain_to_idle_p99_s": round(percentile(drains, 0.99), 3) if drains else None,
            "changes_per_s": round(changes_per_s, 1),
            "samples": len(new),
            "register_to_routed_s": sorted(round(x, 3) for x in h_lat),
            "nginx_register_to_routed_s": sorted(round(x, 3) for x in n_lat),
            "drain_to_idle_s": sorted(round(x, 3) for x in drains),
            "client_requests": {"haproxy": via_h.sent, "nginx": via_n.sent},
            "client_failures": {"haproxy": len(via_h.failures), "nginx": len(via_n.failures)},
            "burst": {"instances": burst, "add_s": round(add_s, 3), "remove_s": round(remove_s, 3)},
            **outage,
        }
    finally:
        rig.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _burst(rig: Rig, servers: Callable[[], dict[str, tuple[str, int, int, int]]], count: int,
           port: int) -> tuple[float, float, float]:
    etcd = f"{rig.etcd_url}/v3"
    lease = int(httpx.post(f"{etcd}/lease/grant", json={"TTL": 60}, timeout=5).json()["ID"])
    base = f"{rig.s.registry.prefix}/services/{rig.svc.name}/instances/burst-"
    value = json.dumps({"address": "127.0.0.1", "port": port, "started_at": int(time.time() * 1000)}).encode()
    start_n, upstream = len(servers()), rig.nginx_upstream()
    t0 = time.monotonic()
    with httpx.Client(timeout=5) as client:
        for i in range(count):
            client.post(f"{etcd}/kv/put", json={"key": _b64(f"{base}{i:04d}".encode()), "value": _b64(value),
                                                "lease": lease}).raise_for_status()
    wait_until("the burst in HAProxy", lambda: len(servers()) >= start_n + count, 120, every_s=0.01)
    add_s = time.monotonic() - t0
    t1 = time.monotonic()
    httpx.post(f"{etcd}/kv/lease/revoke", json={"ID": lease}, timeout=5).raise_for_status()
    wait_until("the burst out of HAProxy", lambda: len(servers()) <= start_n, 120, every_s=0.01)
    remove_s = time.monotonic() - t1
    wait_until("nginx back to its membership before the burst", lambda: rig.nginx_upstream() == upstream, 60)
    return 2 * count / (add_s + remove_s), add_s, remove_s


def _outage(rig: Rig, servers: Callable[[], dict[str, tuple[str, int, int, int]]], seconds: float
            ) -> dict[str, object]:
    before_h, before_n = set(servers()), rig.nginx_upstream()
    client = ClientLoop(rig.haproxy_url).start()
    kept = True
    rig.stop("etcd")
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            kept &= set(servers()) == before_h and rig.nginx_upstream() == before_n
            time.sleep(0.5)
        rig.scale(2)  # a change made while etcd is away, applied once it is back
    finally:
        rig.start("etcd")
    back = time.monotonic()
    wait_until("catch-up after the outage", lambda: len(servers()) == len(before_h) + 1, 120)
    catch_up = time.monotonic() - back
    client.stop()
    return {"etcd_outage_s": seconds, "membership_kept_during_outage": kept,
            "catch_up_s": round(catch_up, 2), "outage_client_failures": len(client.failures)}
