"""Dashboards for people: the Grafana dashboard generated from code (`foresight grafana`)."""
