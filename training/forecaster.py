"""The load forecaster: an MLP over normalised lags and calendar features, quantile outputs;
optionally a few MLPs trained side by side and averaged (less variance on a noisy series).

The module does its own feature work (NaN masks, level normalisation, calendar encoding) so that
the TorchScript file alone turns a raw history into forecasts, as the registry contract asks
(`infra.core.model_registry`): `forward(history, next_minute) -> [batch, horizon, quantiles]` in req/s.

Inputs the network sees, all divided by the recent level (mean of the last hour that has data):
the last `recent` minutes, the minutes around the same time yesterday (`yday_before` before and
`horizon + yday_after` after the first forecast minute, a day earlier), and yesterday in
half-hour means (the day's shape); each with its missing-data mask; the log of the level; and
time of day / day of week as sin/cos when timestamps are known.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

DAY_MIN = 1440
WEEK_S = 7 * 86400.0
DAY_S = 86400.0
# Unix time 0 was a Thursday: shift so that day-of-week 0 is a Monday.
EPOCH_WEEKDAY_SHIFT_S = 3 * 86400.0
PROFILE_BLOCK_MIN = 30
LEVEL_MIN = 60
MIN_LEVEL = 1e-3


def history_len(horizon: int, yday_before: int, yday_after: int) -> int:
    """Minutes of history the module needs: enough to reach yesterday's window start."""
    return max(DAY_MIN + yday_before, DAY_MIN, horizon + yday_after)


def _masked_mean(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    ok = ~torch.isnan(x)
    total = torch.where(ok, x, torch.zeros_like(x)).sum(dim)
    count = ok.sum(dim)
    return total / count.clamp(min=1).to(x.dtype), count > 0


class QuantileForecaster(nn.Module):
    def __init__(
        self,
        horizon: int = 30,
        quantiles: tuple[float, ...] = (0.5, 0.9, 0.99),
        recent: int = 120,
        yday_before: int = 30,
        yday_after: int = 30,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.1,
        members: int = 1,
    ) -> None:
        super().__init__()
        self.horizon = horizon
        self.n_q = len(quantiles)
        self.recent = recent
        self.yday_before = yday_before
        self.yday_len = yday_before + horizon + yday_after
        self.history_len = history_len(horizon, yday_before, yday_after)
        self.profile_blocks = DAY_MIN // PROFILE_BLOCK_MIN
        # TorchScript reads module attributes, not module globals.
        self.day_min = DAY_MIN
        self.block_min = PROFILE_BLOCK_MIN
        self.level_min = LEVEL_MIN
        self.min_level = MIN_LEVEL
        self.day_s = DAY_S
        self.week_s = WEEK_S
        self.weekday_shift_s = EPOCH_WEEKDAY_SHIFT_S
        self.two_pi = 2.0 * math.pi
        n_in = 2 * (recent + self.yday_len + self.profile_blocks) + 1 + 5
        self.members = nn.ModuleList([self._member(n_in, hidden, layers, dropout, horizon * self.n_q)
                                      for _ in range(members)])
        # Statistics of log(level) on the training data, set by the trainer; kept in the file.
        self.log_level_mean: torch.Tensor
        self.log_level_std: torch.Tensor
        self.register_buffer("log_level_mean", torch.zeros(()))
        self.register_buffer("log_level_std", torch.ones(()))

    @staticmethod
    def _member(n_in: int, hidden: int, layers: int, dropout: float, n_out: int) -> nn.Sequential:
        blocks: list[nn.Module] = []
        width = n_in
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        return nn.Sequential(*blocks, nn.Linear(width, n_out))

    def features(self, history: torch.Tensor, next_minute: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, level) for raw histories; exposed so the trainer uses the same code."""
        history = history[:, -self.history_len :]
        recent_level, has_recent = _masked_mean(history[:, -self.level_min:], 1)
        any_level, _ = _masked_mean(history, 1)
        level = torch.where(has_recent, recent_level, any_level)
        level = torch.nan_to_num(level, nan=1.0).clamp(min=self.min_level)
        scaled = history / level.unsqueeze(1)

        recent = scaled[:, -self.recent :]
        start = self.history_len - self.day_min - self.yday_before
        yday = scaled[:, start : start + self.yday_len]
        day = scaled[:, -self.day_min :].reshape(-1, self.profile_blocks, self.block_min)
        profile, has_block = _masked_mean(day, 2)
        parts = [recent, yday, profile]
        values = torch.cat([torch.nan_to_num(p, nan=0.0).clamp(max=20.0) for p in parts], dim=1)
        masks = torch.cat([torch.isnan(recent), torch.isnan(yday), ~has_block], dim=1).to(history.dtype)

        log_level = ((torch.log(level) - self.log_level_mean) / self.log_level_std).unsqueeze(1)
        known = ~torch.isnan(next_minute)
        t = torch.where(known, next_minute, torch.zeros_like(next_minute))
        day_phase = torch.remainder(t, self.day_s) / self.day_s * self.two_pi
        week_phase = torch.remainder(t + self.weekday_shift_s, self.week_s) / self.week_s * self.two_pi
        k = known.to(torch.float64)
        calendar = torch.stack(
            [torch.sin(day_phase) * k, torch.cos(day_phase) * k, torch.sin(week_phase) * k,
             torch.cos(week_phase) * k, k], dim=1,
        ).to(history.dtype)
        return torch.cat([values, masks, log_level, calendar], dim=1), level

    def member_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's quantiles in units of the level, non-decreasing by construction."""
        outs: list[torch.Tensor] = []
        for member in self.members:
            steps = functional.softplus(member(x).reshape(-1, self.horizon, self.n_q))
            outs.append(torch.cumsum(steps, dim=2))
        return outs

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean (a mean of non-decreasing sequences is non-decreasing)."""
        outs = self.member_outputs(x)
        return torch.stack(outs).mean(0)

    def forward(self, history: torch.Tensor, next_minute: torch.Tensor) -> torch.Tensor:
        x, level = self.features(history, next_minute)
        return self.normalised(x) * level.reshape(-1, 1, 1)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Quantile losses summed over the levels, averaged over finite targets; pred [b, h, q], target [b, h].

    `weight` [b] weighs whole samples (the trainer passes the level, so that in normalised units a
    busy hour counts as much as it does in the absolute error the forecast is judged by)."""
    ok = ~torch.isnan(target)
    diff = torch.nan_to_num(target, nan=0.0).unsqueeze(2) - pred
    loss = torch.maximum(quantiles * diff, (quantiles - 1.0) * diff)
    mask = ok.unsqueeze(2).to(pred.dtype)
    if weight is not None:
        return (loss * mask * weight.reshape(-1, 1, 1)).sum() / (mask * weight.reshape(-1, 1, 1)).sum().clamp(
            min=1e-9)
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)
