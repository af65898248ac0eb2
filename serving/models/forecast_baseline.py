"""Recent-level quantiles: the forecast served while no forecast model is in the registry.

Every future minute gets the same distribution: the empirical quantiles of the last
`window` observed minutes (NaN minutes skipped). It knows no trend or season, so it is right
for a steady service and late for a ramp; a learned model has to beat it. Same signature as a
registry forecast module, so it runs through the same batched path.
"""

from __future__ import annotations

import torch
from torch import nn

MODEL_NAME = "recent-level-quantiles"
MODEL_VERSION = "baseline"
QUANTILES = (0.1, 0.5, 0.9)
HORIZON = 60
HISTORY_LEN = 60


class RecentLevelQuantiles(nn.Module):
    levels: torch.Tensor
    def __init__(self, horizon: int = HORIZON, window: int = HISTORY_LEN,
                 quantiles: tuple[float, ...] = QUANTILES) -> None:
        super().__init__()
        self.horizon = horizon
        self.window = window
        self.register_buffer("levels", torch.tensor(quantiles, dtype=torch.float64))

    def forward(self, history: torch.Tensor, next_minute: torch.Tensor) -> torch.Tensor:
        """history float32 [B, L] (NaN = missing) -> float32 [B, horizon, n_quantiles].

        A row with no observed minute gets NaN; the caller turns that into an error message.
        """
        recent = history[:, -self.window:].to(torch.float64)
        q = torch.nanquantile(recent, self.levels, dim=1).T  # [B, n_quantiles], ascending by construction
        return q.to(torch.float32).unsqueeze(1).expand(-1, self.horizon, -1).contiguous()
