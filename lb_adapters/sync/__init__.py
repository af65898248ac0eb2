"""Balancer membership follows the registry: a watch on etcd, applied to HAProxy and nginx."""
