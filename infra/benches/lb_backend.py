"""One backend of `foresight bench lb`: the pool's `Backend` (same queueing, same fault code) run
without the registry, since the bench's private HAProxy lists its servers in its config.

`python -P -m infra.benches.lb_backend --instance b0 --port 31000 --workers 2 --mean-service-s 0.1`
Faults arrive at load start through its `/admin/faults` (so every arm's scenario clock starts with
its load, to the millisecond), or from `--scenario` (its clock then starts when the backend is ready).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from infra.pool.backend import Backend, BackendConfig
from infra.pool.faults import load_scenario


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--instance", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mean-service-s", type=float, default=0.1)
    p.add_argument("--distribution", default="exponential")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--scenario", type=Path, default=None)
    p.add_argument("--index", type=int, default=-1, help="This backend's index, for faults on `#k`.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = BackendConfig(service="bench", instance=args.instance, port=args.port, workers=args.workers,
                        mean_service_s=args.mean_service_s, distribution=args.distribution, startup_delay_s=0.0,
                        stop_grace_s=1.0)
    faults = load_scenario(args.scenario).for_instance(args.instance, args.index) if args.scenario else []
    asyncio.run(Backend(cfg, seed=args.seed, faults=faults).run())


if __name__ == "__main__":
    main()
