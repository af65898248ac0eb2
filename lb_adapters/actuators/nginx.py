"""nginx membership: write one service's upstream file, check the whole config with `nginx -t`, and
reload gracefully (old workers finish their requests). I/O only; the text comes from the sync's plan.

A candidate that fails `nginx -t` is rolled back on disk before nginx ever reads it, so the running
configuration stays as it was; the caller logs and counts the failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lb_adapters.actuators.base import ActuatorError


class NginxError(ActuatorError):
    def __init__(self, message: str, rejected: bool) -> None:
        super().__init__(message)
        self.rejected = rejected  # True: `nginx -t` refused the render; False: the reload itself failed


class NginxUpstreams:
    name = "nginx"

    def __init__(self, conf: Path, upstream_dir: Path, error_log: Path, binary: str = "nginx",
                 timeout_s: float = 10.0) -> None:
        self.conf, self.upstream_dir, self.error_log = conf, upstream_dir, error_log
        self.binary, self.timeout_s = binary, timeout_s

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, "-c", str(self.conf), "-e", str(self.error_log), *args],
                              capture_output=True, text=True, timeout=self.timeout_s, check=False)

    def upstream_path(self, service: str) -> Path:
        return self.upstream_dir / f"{service}.conf"

    def current(self, service: str) -> str | None:
        path = self.upstream_path(service)
        return path.read_text() if path.exists() else None

    def apply(self, service: str, text: str) -> None:
        """Install `text` as the service's upstream file and reload; NginxError (nothing changed) if
        `nginx -t` refuses it, or if the reload signal could not be sent."""
        path = self.upstream_path(service)
        previous = self.current(service)
        self.upstream_dir.mkdir(parents=True, exist_ok=True)
        candidate = path.with_suffix(".conf.new")
        candidate.write_text(text)
        os.replace(candidate, path)
        test = self._run("-t", "-q")
        if test.returncode != 0:
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                candidate.write_text(previous)
                os.replace(candidate, path)
            raise NginxError(f"nginx -t rejected the upstream of {service}; running config kept: "
                             f"{(test.stderr or test.stdout).strip()[-400:]}", rejected=True)
        reload = self._run("-s", "reload")
        if reload.returncode != 0:
            raise NginxError(f"nginx -s reload failed (is nginx running? `foresight stack status`): "
                             f"{(reload.stderr or reload.stdout).strip()[-400:]}", rejected=False)
