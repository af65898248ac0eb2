"""Prometheus metrics of `foresight registry-sync`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("foresight_sync_events", "Registry watch events, by kind (put, delete, resync, lost).", ["kind"])
INVALID = Counter("foresight_sync_invalid_values", "Registry values that are not valid instance records "
                  "(ignored; the last valid value of the key stays).", ["service"])
CHANGES = Counter("foresight_sync_changes", "Membership changes applied to a balancer.",
                  ["actuator", "action", "outcome"])
NGINX_RELOADS = Counter("foresight_sync_nginx_reloads", "nginx upstream renders: applied, rejected by "
                        "`nginx -t` (running config kept) or reload failed.", ["outcome"])
ETCD_UP = Gauge("foresight_sync_etcd_up", "1 while the registry watch is connected.")
LEADER = Gauge("foresight_sync_leader", "1 while this process holds the service's sync leadership.", ["service"])
MEMBERS = Gauge("foresight_sync_members", "Servers a balancer has for the service, as last applied.",
                ["actuator", "service"])
APPLY_LAG = Histogram("foresight_sync_event_to_applied_seconds", "From a registry event's arrival to the "
                      "balancer change it caused.", ["actuator"],
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
