"""Where the scaler's numbers come from: serving's `/v1/forecast`, and ClickHouse `features` as fallback."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError

from infra.core.features_table import read_minute_requests
from lb_adapters.keda.metric import Load, TriggerConfig, choose_load
from lb_adapters.keda.metrics import FALLBACKS, LOAD
from lb_adapters.predictions import ForecastClient, ServingError
from serving.schemas import ForecastRequest, ForecastResponse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LastForecast:
    response: ForecastResponse
    at: float


class LoadSource:
    """Asks serving for each call, keeps the last good forecast per service, falls back to `features`."""

    def __init__(self, forecasts: ForecastClient, clickhouse: Callable[[], Client], database: str,
                 forecast_max_age_s: float, observed_minutes: int, clock: Callable[[], float] = time.time) -> None:
        self.forecasts = forecasts
        self.clickhouse = clickhouse
        self.database = database
        self.max_age_s = forecast_max_age_s
        self.observed_minutes = observed_minutes
        self.clock = clock
        self._last: dict[str, LastForecast] = {}
        self._fell_back: set[str] = set()
        self._lock = threading.Lock()

    def observed(self, service: str, now_s: float) -> list[tuple[int, int]]:
        """(minute, requests) of the service's last whole minutes; the minute in progress left out."""
        end = math.floor(now_s / 60) * 60
        client = self.clickhouse()
        try:
            return read_minute_requests(client, self.database, service, end - self.observed_minutes * 60, end)
        finally:
            client.disconnect()

    def load(self, trigger: TriggerConfig) -> Load:
        service = trigger.service
        problem: str | None = None
        try:
            fresh = self.forecasts.forecast(ForecastRequest(service=service, horizon=trigger.horizon_minutes))
        except ServingError as exc:
            problem = str(exc)
        else:
            with self._lock:
                self._last[service] = LastForecast(fresh, self.clock())
        with self._lock:
            last = self._last.get(service)
        now = self.clock()
        observed: list[tuple[int, int]] | None = None
        if last is None or now - last.at > self.max_age_s:
            try:
                observed = self.observed(service, now)
            except (ClickHouseError, OSError, EOFError) as exc:
                log.warning("observed load of %s unreadable from ClickHouse: %s", service, exc)
                observed = None
        result = choose_load(trigger, last.response if last else None, last.at if last else None, problem,
                             observed, now, self.max_age_s)
        self._record(service, result)
        return result

    def _record(self, service: str, result: Load) -> None:
        other = "observed" if result.source == "forecast" else "forecast"
        LOAD.labels(service, result.source).set(result.rate)
        LOAD.labels(service, other).set(math.nan)
        with self._lock:
            was_fallback = service in self._fell_back
            if result.source == "observed":
                self._fell_back.add(service)
            else:
                self._fell_back.discard(service)
        if result.source == "observed":
            FALLBACKS.labels(service).inc()
            if not was_fallback:
                log.warning("%s: %s", service, result.note)
        elif was_fallback:
            log.info("%s: forecast fresh again: %s", service, result.note)
