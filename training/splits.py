"""Time splits: train, then validation, then test, each a contiguous range of minutes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.series import RateSeries


class Splits(BaseModel):
    """Minute ranges [0, val_start), [val_start, test_start), [test_start, end)."""

    model_config = ConfigDict(extra="forbid")

    val_start: int = Field(gt=0)
    test_start: int
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> Splits:
        if not 0 < self.val_start < self.test_start < self.end:
            raise ValueError(f"splits must be ordered: 0 < {self.val_start} < {self.test_start} < {self.end}")
        return self

    @property
    def train(self) -> tuple[int, int]:
        return (0, self.val_start)

    @property
    def val(self) -> tuple[int, int]:
        return (self.val_start, self.test_start)

    @property
    def test(self) -> tuple[int, int]:
        return (self.test_start, self.end)


def split_by_index(series: RateSeries, test_from: int | None = None, val_from: int | None = None,
                   test_frac: float = 0.25, val_frac: float = 0.15) -> Splits:
    """Splits given as file second indices (defaults: the last `test_frac` of the trace is the
    test range, the `val_frac` before it validates), mapped onto the minute series."""
    n_seconds = series.n_seconds
    test_idx = int(n_seconds * (1 - test_frac)) if test_from is None else test_from
    val_idx = max(test_idx - int(n_seconds * val_frac), 1) if val_from is None else val_from
    return Splits(val_start=series.minute_of_index(val_idx), test_start=series.minute_of_index(test_idx),
                  end=len(series))
