"""Which model version of one kind answers, read from the registry training writes.

Plain Python (no Ray), so the rules are unit-tested directly: the newest version that loads and
replays its smoke case goes into service; a newer one replaces it only once it has passed the
same checks, by swapping one reference (a request sees the old model or the new, never a mix);
a version that fails is refused with its reason, remembered so it is not retried on every
poll, and the version in service stays.

A reload request reaches one replica, but must reach them all: it bumps a reload marker in the
registry (`<root>/<kind>/.reload`, replaced atomically), and every replica compares the marker
with the one it last saw before it answers (`follow`, one `stat`), refreshing when it changed.
So with polling off (`registry_poll_s = 0`) every replica answers with the reloaded version from
its first answer after the reload on; the registry is already the shared medium between replicas.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from infra.core.health_features import LATENCY_OUTPUTS, unknown_columns
from infra.core.model_registry import (
    MODEL_FILE,
    SMOKE_FILE,
    FileCheckError,
    ModelKind,
    ModelManifest,
    SmokeCase,
    list_versions,
    read_manifest,
    verify_files,
)
from serving.schemas import ModelStatus, RefusedModel, ReloadResponse
from serving.smoke import SmokeFailure, replay

logger = logging.getLogger(__name__)

# Longest horizon and history a forecast version may declare; larger ones are refused.
MAX_MODEL_HORIZON = 1440
MAX_MODEL_HISTORY = 10080


class Refusal(BaseModel):
    version: str
    reason: str
    refused_at: float = Field(description="Unix time of the refusal.")


@dataclass(frozen=True)
class LoadedVersion:
    """A version in service: the module and the manifest that describes it."""

    version: str
    manifest: ModelManifest
    module: torch.jit.ScriptModule
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RefreshResult:
    loaded: str | None
    refused: list[Refusal]


class RefusedVersion(Exception):
    """Why one version may not go into service."""


def load_version(version_dir: Path, kind: ModelKind) -> LoadedVersion:
    """Load and smoke-check one version folder; RefusedVersion says what is wrong with it."""
    version = version_dir.name
    try:
        manifest = read_manifest(version_dir)
    except Exception as exc:
        raise RefusedVersion(f"manifest.json unreadable: {_first_line(exc)}") from exc
    if manifest.kind != kind or manifest.version != version:
        raise RefusedVersion(f"manifest names {manifest.kind}/{manifest.version}, folder is {kind}/{version}")
    if kind == "forecast":
        _check_forecast_spec(manifest)
    else:
        _check_health_spec(manifest)
    try:  # before torch.jit.load: never unpickle a file the manifest does not vouch for
        verify_files(version_dir, manifest)
    except FileCheckError as exc:
        raise RefusedVersion(str(exc)) from exc
    try:
        module = torch.jit.load(str(version_dir / MODEL_FILE), map_location="cpu")
    except Exception as exc:
        raise RefusedVersion(f"model.pt does not load: {_first_line(exc)}") from exc
    module.eval()
    try:
        smoke = SmokeCase.model_validate_json((version_dir / SMOKE_FILE).read_text())
    except Exception as exc:
        raise RefusedVersion(f"smoke.json unreadable: {_first_line(exc)}") from exc
    try:
        replay(module, manifest, smoke)
    except SmokeFailure as exc:
        raise RefusedVersion(f"smoke check failed: {exc}") from exc
    return LoadedVersion(version=version, manifest=manifest, module=module)


def _check_forecast_spec(manifest: ModelManifest) -> None:
    spec = manifest.forecast
    if spec is None:
        raise RefusedVersion("forecast manifest has no `forecast` spec")
    if spec.horizon > MAX_MODEL_HORIZON or spec.history_len > MAX_MODEL_HISTORY:
        raise RefusedVersion(f"horizon {spec.horizon} / history {spec.history_len} above the limits "
                             f"{MAX_MODEL_HORIZON} / {MAX_MODEL_HISTORY}")
    levels = spec.quantiles
    if not levels or any(not 0 < q < 1 for q in levels) or levels != sorted(set(levels)):
        raise RefusedVersion(f"quantiles {levels} must be distinct, ascending and inside (0, 1)")


def _check_health_spec(manifest: ModelManifest) -> None:
    spec = manifest.health
    if spec is None:
        raise RefusedVersion(f"{manifest.kind} manifest has no `health` spec")
    unknown = unknown_columns(spec.columns)
    if unknown:
        raise RefusedVersion(f"input columns {unknown} unknown to this server's feature derivation "
                             "(infra.core.health_features)")
    if len(set(spec.columns)) != len(spec.columns):
        raise RefusedVersion(f"input columns {spec.columns} repeat a name")
    if manifest.kind == "risk" and spec.horizon_s is None:
        raise RefusedVersion("risk manifest has no `health.horizon_s`")
    if manifest.kind == "latency" and tuple(spec.outputs) != LATENCY_OUTPUTS:
        raise RefusedVersion(f"latency outputs {spec.outputs}, expected {list(LATENCY_OUTPUTS)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


RELOAD_MARKER = ".reload"  # in <root>/<kind>/; versions are folders, so list_versions never sees it


class ModelSlot:
    """The version of one kind in service, and the versions refused, for one replica."""

    def __init__(self, root: Path, kind: ModelKind) -> None:
        self.root = root
        self.kind = kind
        self._current: LoadedVersion | None = None
        self._refused: dict[str, Refusal] = {}
        self._lock = threading.Lock()  # one refresh at a time (poll thread and reload request)
        self._marker = root / kind / RELOAD_MARKER
        self._seen_marker = self._marker_id()

    def _marker_id(self) -> tuple[int, int] | None:
        """(inode, mtime ns) of the reload marker: a replace gives a new inode, so no write goes unseen."""
        try:
            st = os.stat(self._marker)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def request_reload(self) -> RefreshResult:
        """Refresh here, and bump the marker so every other replica refreshes before its next answer."""
        self._marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._marker.with_name(f"{RELOAD_MARKER}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(f"{time.time_ns()}\n")
        tmp.replace(self._marker)
        self._seen_marker = self._marker_id()
        return self.refresh()

    def follow(self) -> RefreshResult | None:
        """Refresh if a reload was requested (on any replica) since this one last looked; else None."""
        seen = self._marker_id()
        if seen == self._seen_marker:
            return None
        self._seen_marker = seen
        return self.refresh()

    @property
    def current(self) -> LoadedVersion | None:
        """Read once per request: the reference is swapped whole, never mutated."""
        return self._current

    @property
    def refused(self) -> list[Refusal]:
        return sorted(self._refused.values(), key=lambda r: r.version)

    def refresh(self) -> RefreshResult:
        """Put the newest valid version newer than the current one into service, if there is one.

        Versions are tried newest first; each that fails is refused (and not tried again), and
        the first that passes is swapped in. Older versions than the current one are ignored.
        """
        with self._lock:
            current = self._current
            newly_refused: list[Refusal] = []
            candidates = [v for v in list_versions(self.root, self.kind)
                          if v not in self._refused and (current is None or v > current.version)]
            for version in reversed(candidates):
                try:
                    loaded = load_version(self.root / self.kind / version, self.kind)
                except RefusedVersion as exc:
                    refusal = Refusal(version=version, reason=str(exc), refused_at=time.time())
                    self._refused[version] = refusal
                    newly_refused.append(refusal)
                    logger.warning("model %s/%s refused: %s", self.kind, version, exc)
                    continue
                self._current = loaded
                logger.info("model %s/%s in service (was %s)", self.kind, version,
                            current.version if current else "baseline")
                return RefreshResult(loaded=version, refused=newly_refused)
            return RefreshResult(loaded=None, refused=newly_refused)


class RegistryPoller:
    """Refreshes a slot every `interval_s` from a daemon thread, until stopped."""

    def __init__(self, slot: ModelSlot, interval_s: float) -> None:
        self._slot = slot
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"registry-poll-{slot.kind}", daemon=True)

    def start(self) -> None:
        if self._interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._slot.refresh()
            except Exception:  # a broken registry folder must not end polling for good
                logger.exception("polling the %s registry failed", self._slot.kind)


class RegistryReplica:
    """What each model deployment's replica shares: the slot of its kind, polled, with status and reload.

    Subclasses call `_start_registry` in `__init__` and implement `status`; the newest valid
    version answers, the kind's baseline while there is none.
    """

    kind: ModelKind
    _slot: ModelSlot
    _poller: RegistryPoller | None = None

    def _start_registry(self, registry_root: Path, poll_s: float) -> None:
        self._slot = ModelSlot(registry_root, self.kind)
        self._slot.refresh()
        self._poller = RegistryPoller(self._slot, poll_s)
        self._poller.start()

    def __del__(self) -> None:
        if self._poller is not None:  # absent when __init__ failed
            self._poller.stop()

    def _loaded(self) -> LoadedVersion | None:
        """The version to answer with (following a reload requested on another replica), or None."""
        self._slot.follow()
        return self._slot.current

    def refused_models(self) -> list[RefusedModel]:
        return [RefusedModel(**r.model_dump()) for r in self._slot.refused]

    def status(self) -> ModelStatus:
        raise NotImplementedError

    def reload(self) -> ReloadResponse:
        """Check the registry now, here, and have every other replica follow before its next answer."""
        result = self._slot.request_reload()
        return ReloadResponse(
            models=[self.status()],
            loaded=[f"{self.kind}/{result.loaded}"] if result.loaded else [],
            refused=[RefusedModel(**r.model_dump()) for r in result.refused])
