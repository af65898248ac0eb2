"""Routing rules: first match wins, `*` keeps the host or the file stem, defaults when nothing matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.core.settings import RouteRule
from ingest.routing import Router, file_stem


def rule(match: str, value: str, service: str, instance: str = "*") -> RouteRule:
    return RouteRule.model_validate({"match": match, "value": value, "service": service, "instance": instance})


RULES = [
    rule("host", "lb.example.com", "edge", "lb"),
    rule("host", "*.ksc.nasa.gov", "internal"),
    rule("path_prefix", "/api/", "api"),
    rule("path_prefix", "/api/v2/", "api-v2"),  # shadowed by the rule above: first match wins
    rule("file", "shop-*.log", "shop"),
    rule("path_prefix", "/images/", "images", "cdn"),  # after a matching file rule: never reached there
]


@pytest.mark.parametrize(
    ("host", "path", "file", "expected"),
    [
        ("lb.example.com", "/x", None, ("edge", "lb")),
        ("LB.Example.COM", "/x", None, ("edge", "lb")),  # host names are case-insensitive
        ("n1.ksc.nasa.gov", "/api/x", None, ("internal", "n1.ksc.nasa.gov")),  # host rule listed first
        ("ksc.nasa.gov", "/x", None, ("dflt", "ksc.nasa.gov")),  # the glob needs a subdomain
        ("1.2.3.4", "/api/v2/x", None, ("api", "1.2.3.4")),
        ("1.2.3.4", "/apix", None, ("dflt", "1.2.3.4")),
        ("1.2.3.4", "/images/a.gif", None, ("images", "cdn")),
        (None, "/api/x", None, ("api", "-")),
        (None, "/x", None, ("dflt", "-")),
        (None, "/x", "/var/log/web-1.log", ("dflt", "web-1")),
        ("1.2.3.4", "/x", "/var/log/shop-3.log", ("shop", "shop-3")),
        ("1.2.3.4", "/images/a.gif", "/var/log/shop-3.log", ("shop", "shop-3")),
        ("1.2.3.4", "/images/a.gif", "/var/log/shop-3.log.1.gz", ("images", "cdn")),  # a glob is a glob
        ("1.2.3.4", "/api/x", "/var/log/shop-3.log", ("api", "1.2.3.4")),  # rule before the file rule
        ("lb.example.com", "/x", "shop-3.log", ("edge", "lb")),
        ("1.2.3.4", "/x", "/var/log/other.log", ("dflt", "1.2.3.4")),
    ],
)
def test_first_matching_rule_wins(host: str | None, path: str, file: str | None, expected: tuple[str, str]) -> None:
    assert Router(RULES, "dflt", file)(host, path) == expected


def test_no_rules_defaults_to_the_host() -> None:
    router = Router([], "svc")
    assert router("1.2.3.4", "/") == ("svc", "1.2.3.4")
    assert router("", "/") == ("svc", "-")
    assert Router([], "svc", Path("/logs/a.log"))(None, "/") == ("svc", "a")


def test_file_globs_with_a_slash_match_the_whole_path() -> None:
    rules = [rule("file", "/srv/*/access.log", "srv", "fixed")]
    assert Router(rules, "d", "/srv/shop/access.log")("h", "/") == ("srv", "fixed")
    assert Router(rules, "d", "access.log")("h", "/") == ("d", "h")
    assert Router(rules, "d", None)("h", "/") == ("d", "h")


def test_star_instance_of_a_path_rule_falls_back_to_the_file_stem() -> None:
    router = Router([rule("path_prefix", "/", "all")], "d", "/logs/web-9.access.log.2.gz")
    assert router(None, "/x") == ("all", "web-9.access")
    assert router("h", "/x") == ("all", "h")


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("access.log", "access"),
        ("/var/log/nginx/access.log.2.gz", "access"),
        ("web-1.example.com.log", "web-1.example.com"),
        ("access.log-20240101.gz", "access"),
        ("api.jsonl.bz2", "api"),
        ("trace", "trace"),
        (".log", ".log"),
    ],
)
def test_file_stem(name: str, stem: str) -> None:
    assert file_stem(name) == stem
