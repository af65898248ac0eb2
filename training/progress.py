"""Progress on stderr (stdout stays for results): timestamped notes and an epoch bar."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from training.fit import OnEpoch

err = Console(stderr=True)


def say(message: str) -> None:
    err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", highlight=False)


@contextmanager
def epoch_bar(epochs: int) -> Iterator[OnEpoch]:
    """An `on_epoch` callback that moves a progress bar showing the losses."""
    with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
                  TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task("train", total=epochs, loss="")

        def on_epoch(epoch: int, total: int, train_loss: float, val_loss: float) -> None:
            bar.update(task, completed=epoch, total=total, loss=f"loss {train_loss:.4f} val {val_loss:.4f}")

        yield on_epoch


@contextmanager
def sim_bar(runs: int) -> Iterator[Callable[[], None]]:
    """A callback that moves a progress bar, one call per simulator run."""
    with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task("sim", total=runs)
        yield lambda: bar.advance(task)
