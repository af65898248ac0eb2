"""Where the shared real-traffic datasets are: `$FORESIGHT_DATASETS`, else `shared/datasets` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NASA_SAMPLE = "nasa-http-1995-sample.log"
NASA_RPS = "nasa-http-1995-rps.txt.bz2"


def dataset_path(name: str) -> Path:
    """The dataset `name`; the error names where it looked and how to point elsewhere."""
    candidates = [Path(os.environ["FORESIGHT_DATASETS"])] if os.environ.get("FORESIGHT_DATASETS") else []
    candidates += [REPO.parent / "shared" / "datasets", REPO / "shared" / "datasets"]
    for folder in candidates:
        if (folder / name).is_file():
            return folder / name
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"dataset {name} not found in {looked}; set FORESIGHT_DATASETS to its folder")
