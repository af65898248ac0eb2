"""The import contracts of pyproject.toml hold, and would catch a backwards import."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
PACKAGES = CONFIG["root_packages"]


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    # No cache: a stale graph must never let a broken contract pass.
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_every_contract_is_kept() -> None:
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_every_module_of_the_composition_root_is_in_a_layer() -> None:
    """A new module directly under infra/ must say whether it is root or foundation."""
    layers = next(c for c in CONFIG["contracts"] if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    modules = {f"infra.{p.stem}" for p in (REPO / "infra").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert modules - named == set()


def test_every_stage_folder_is_a_root_package() -> None:
    stages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert stages == set(PACKAGES)


@pytest.mark.parametrize(("importer", "imported", "contract"), [
    ("infra/core/ports.py", "import infra.cli", "Data moves one way"),
    ("streams/windows.py", "import lb_adapters.controller", "Data moves one way"),
    ("serving/app.py", "import training.fit", "Data moves one way"),
    ("lb_adapters/controller.py", "import serving.app", "lb_adapters reads upstream stages' published schemas only"),
    ("streams/app.py", "import ingest.sinks.kafka", "streams reads ingest's published schemas only"),
])
def test_a_backwards_import_breaks_a_named_contract(tmp_path: Path, importer: str, imported: str,
                                                    contract: str) -> None:
    for name in [*PACKAGES, "pyproject.toml"]:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    target = tmp_path / importer
    target.write_text(target.read_text() + f"\n{imported}  # added by the test\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert contract in proc.stdout.replace("\n", " ")
    assert "BROKEN" in proc.stdout
