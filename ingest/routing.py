"""Which service/instance a log line belongs to, for formats that do not say (Common/Combined, JSON).

`IngestSettings.routes` is an ordered list of `RouteRule`s; the first that matches wins:
- `host`: the line's host (CLF: the client field `%h`; JSON: the mapped `host` field), compared
  case-insensitively, exactly or as a shell glob (`*.ksc.nasa.gov`);
- `path_prefix`: the route starts with the value;
- `file`: the file being read matches the glob (against its base name when the glob has no `/`,
  else against the whole path). A glob is strict: `web-*.log` misses `web-1.log.1.gz`, write `web-*.log*`.
Instance `*` keeps the line's host, or the file stem when the line has none; for a `file` rule
always the file stem. No rule: `default_service` and the host (else the file stem, else `-`).
A host that names the *client* (CLF's `%h`) matches host rules but never becomes the instance
(`host_is_instance=False`): the instance is the server that wrote the log, i.e. its file.

File rules are settled once per file when the router is built: each line then only tries the
host and path rules that precede the first matching file rule, and a router without rules is a
constant lookup. Hot path: reuse one router per file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import fnmatchcase, translate
from pathlib import PurePath

from infra.core.settings import RouteRule

NO_INSTANCE = "-"
_GLOB_CHARS = frozenset("*?[")
# compression, `.N` rotation, `-YYYYMMDD` dateext and log-ish extensions, in any order at the end
_LOG_SUFFIXES = re.compile(r"(?:\.(?:gz|bz2|xz|zst|\d+|log|txt|json|jsonl|ndjson)|-\d{8})+$", re.ASCII)


class Router:
    """`router(host, path) -> (service, instance)` for the lines of one file (or of no file)."""

    def __init__(self, routes: Sequence[RouteRule], default_service: str, file: str | PurePath | None = None) -> None:
        self.default_service = default_service
        self.file_stem = file_stem(file) if file is not None else None
        # (is_host, text, glob pattern or None, service, instance), in rule order
        self._rules: list[tuple[bool, str, re.Pattern[str] | None, str, str]] = []
        self._final: tuple[str, str] | None = None  # a matching file rule: every line not caught before ends here
        for rule in routes:
            if rule.match == "file":
                if file is not None and _file_matches(rule.value, str(file)):
                    self._final = (rule.service, file_stem(file) if rule.instance == "*" else rule.instance)
                    break
            elif rule.match == "host":
                value = rule.value.lower()
                glob = re.compile(translate(value)) if _GLOB_CHARS & set(value) else None
                self._rules.append((True, value, glob, rule.service, rule.instance))
            else:
                self._rules.append((False, rule.value, None, rule.service, rule.instance))

    def __call__(self, host: str | None, path: str, *, host_is_instance: bool = True) -> tuple[str, str]:
        fallback = (host if host_is_instance else None) or self.file_stem or NO_INSTANCE
        if self._rules:
            lower = host.lower() if host else None
            for is_host, value, glob, service, instance in self._rules:
                if is_host:
                    if lower is None or not (value == lower if glob is None else glob.match(lower)):
                        continue
                elif not path.startswith(value):
                    continue
                return service, fallback if instance == "*" else instance
        if self._final is not None:
            return self._final
        return self.default_service, fallback


def file_stem(file: str | PurePath) -> str:
    """`web-1.access.log.2.gz` -> `web-1.access`: log, rotation and compression suffixes name no other instance."""
    name = PurePath(file).name
    return _LOG_SUFFIXES.sub("", name) or name


def _file_matches(glob: str, path: str) -> bool:
    return fnmatchcase(path if "/" in glob else PurePath(path).name, glob)
