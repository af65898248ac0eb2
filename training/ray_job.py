"""Training as a Ray task: on a cluster when given its address, else on a local Ray of our own.

The driver reads the data (it can reach ClickHouse or the file) and ships the series to the task;
the task trains and returns the TorchScript bytes with its hold-out metrics, so the cluster needs
neither the data source nor the registry folder. Epoch progress comes back through a Ray queue.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infra.core.ray_loopback import loopback_head_options
from training.baselines import residual_quantiles, seasonal_naive, with_quantiles
from training.fit import OnEpoch, TrainConfig, forecast, script, targets, train
from training.metrics import horizon_table, mase_scale
from training.series import RateSeries

# Ray's unix sockets live under its temp dir and AF_UNIX paths stop at 107 bytes.
MAX_RAY_TEMP_DIR_CHARS = 40
OBJECT_STORE_BYTES = 128 * 1024**2


def ray_temp_dir(state_dir: Path) -> Path:
    inside = state_dir.resolve() / "ray-train"
    if len(str(inside)) <= MAX_RAY_TEMP_DIR_CHARS:
        return inside
    return Path("/tmp") / f"foresight-ray-train-{os.getuid()}"


def holdout_metrics(series: RateSeries, module: torch.nn.Module, history: int, val_start: int,
                    cfg: TrainConfig) -> dict[str, Any]:
    """Model against seasonal naive on the held-out tail (what the manifest records)."""
    y = series.values
    origins = np.arange(val_start, len(series) - cfg.horizon + 1)
    if len(origins) == 0:
        return {}
    naive = seasonal_naive(y, origins, cfg.horizon)
    fit = np.arange(1440, max(1440, val_start - cfg.horizon + 1))  # its bands come from its training residuals
    offsets = (residual_quantiles(y, seasonal_naive(y, fit, cfg.horizon), fit, cfg.quantiles) if len(fit)
               else np.zeros((cfg.horizon, len(cfg.quantiles))))
    fc = {"model": forecast(module, series, origins, history),
          "seasonal_naive": with_quantiles(naive, offsets, cfg.quantiles)}
    horizons = tuple(h for h in (1, 5, 15, 30) if h <= cfg.horizon)
    try:
        scale = mase_scale(y[:val_start])
    except ValueError:
        scale = float("nan")
    return horizon_table(targets(y, origins, cfg.horizon).astype(np.float64), fc, cfg.quantiles, scale, horizons)


def train_task(values: np.ndarray, start_unix_s: float | None, n_seconds: int, val_frac: float,
               cfg_json: str, progress: Any = None, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """The body of the Ray task or of each Ray Train worker (a plain function, testable without Ray)."""
    cfg = TrainConfig.model_validate_json(cfg_json)
    series = RateSeries(values=values, start_unix_s=start_unix_s,
                        second_index=np.arange(len(values), dtype=np.int64) * 60, n_seconds=n_seconds)
    val_start = int(len(series) * (1 - val_frac))

    def on_epoch(epoch: int, total: int, train_loss: float, val_loss: float) -> None:
        if progress is not None:
            progress.put((epoch, total, train_loss, val_loss))

    result = train(series, (0, val_start), (val_start, len(series)), cfg, on_epoch, shard)
    scripted = script(result.module)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return {
        "model": buffer.getvalue(),
        "history_len": result.module.history_len,
        "metrics": {"holdout": holdout_metrics(series, scripted, result.module.history_len, val_start, cfg),
                    "val_loss": result.val_loss, "best_epoch": result.best_epoch,
                    "train_seconds": round(result.seconds, 1), "samples": result.samples, "device": result.device},
    }


def _train_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker: train its shard; rank 0 reports the module as the run's checkpoint."""
    import tempfile

    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    result = train_task(config["values"], config["start_unix_s"], config["n_seconds"], config["val_frac"],
                        config["cfg_json"], config["progress"] if rank == 0 else None, (rank, world))
    if rank != 0:
        ray.train.report({"best_epoch": result["metrics"]["best_epoch"]})
        return
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "model.pt").write_bytes(result.pop("model"))
        (Path(folder) / "result.json").write_text(json.dumps(result))
        ray.train.report({"best_epoch": result["metrics"]["best_epoch"]},
                         checkpoint=ray.train.Checkpoint.from_directory(folder))


def _fit_with_ray_train(series: RateSeries, cfg: TrainConfig, val_frac: float, workers: int, storage: Path,
                        queue: Any) -> dict[str, Any]:
    """Ray Train's TorchTrainer over `workers` workers (gloo process group on CPU); the result of rank 0."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"values": series.values, "start_unix_s": series.start_unix_s,
                           "n_seconds": series.n_seconds, "val_frac": val_frac, "cfg_json": cfg.model_dump_json(),
                           "progress": queue},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=torch.cuda.is_available()),
        run_config=RunConfig(storage_path=str(storage), name=f"forecast-{time.strftime('%Y%m%dT%H%M%S')}"),
    )
    fitted = trainer.fit()
    if fitted.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint: {fitted.error}")
    with fitted.checkpoint.as_directory() as folder:
        result: dict[str, Any] = json.loads((Path(folder) / "result.json").read_text())
        result["model"] = (Path(folder) / "model.pt").read_bytes()
    return result


def _drain_until(done: Callable[[], bool], queue: Any, on_epoch: OnEpoch | None, empty: type[Exception]) -> None:
    """Pass epoch reports from the queue to `on_epoch` until `done()`, then the last ones."""
    while True:
        finished = done()
        while True:
            try:
                item = queue.get_nowait()
            except empty:
                break
            if on_epoch is not None:
                on_epoch(*item)
        if finished:
            return
        time.sleep(0.2)


def run_on_ray(series: RateSeries, cfg: TrainConfig, val_frac: float, address: str | None, num_cpus: int,
               state_dir: Path, on_epoch: OnEpoch | None = None, workers: int = 0,
               storage: Path | None = None) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Train through Ray and return (module, result without the bytes).

    `workers` = 0 runs one Ray task; N > 0 runs Ray Train's TorchTrainer with N data-parallel
    workers, whose checkpoints go to `storage` (on a multi-node cluster, storage all nodes and
    this process can reach)."""
    import ray
    from ray.util.queue import Empty, Queue

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            import training

            ray.init(address=address, runtime_env={"py_modules": [str(Path(training.__file__).parent)]})
        else:
            temp = ray_temp_dir(state_dir)
            temp.mkdir(parents=True, exist_ok=True)
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=OBJECT_STORE_BYTES,
                     include_dashboard=False, _temp_dir=str(temp), log_to_driver=False,
                     **loopback_head_options())  # nothing Ray starts listens beyond 127.0.0.1
    try:
        queue = Queue()
        if workers > 0:
            # TorchTrainer.fit blocks; a thread runs it so that progress can be shown meanwhile.
            pool = ThreadPoolExecutor(1)
            future = pool.submit(_fit_with_ray_train, series, cfg, val_frac, workers,
                                 (storage or state_dir / "ray-results").resolve(), queue)
            pool.shutdown(wait=False)
            _drain_until(future.done, queue, on_epoch, Empty)
            result = future.result()
        else:
            task = ray.remote(num_cpus=1, num_gpus=1 if torch.cuda.is_available() else 0)(train_task)
            ref = task.remote(series.values, series.start_unix_s, series.n_seconds, val_frac,
                              cfg.model_dump_json(), queue)
            _drain_until(lambda: bool(ray.wait([ref], timeout=0.5)[0]), queue, on_epoch, Empty)
            result = ray.get(ref)
        queue.shutdown()
    finally:
        if started_here:
            ray.shutdown()
    module: torch.jit.ScriptModule = torch.jit.load(io.BytesIO(result.pop("model")))
    return module, result
