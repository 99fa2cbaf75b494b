"""The layers of DESIGN.md hold: the import-linter contracts in pyproject.toml, run as CI runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in proc.stdout, proc.stdout[-2000:]


def test_an_upward_import_would_break_the_contract(tmp_path: Path) -> None:
    """The contract is not vacuous: in a copy of the tree, a link module importing a service is caught."""
    for name in ("fieldkit", "screens"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "fieldkit" / "link" / "_layer_probe.py").write_text("from fieldkit import journal  # deliberately upward\n")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe, "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "fieldkit.link._layer_probe -> fieldkit.journal" in proc.stdout, proc.stdout[-2000:]


def test_every_module_of_the_core_has_a_layer() -> None:
    """A module the contract does not name would escape it: each one must be placed in a layer."""
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = next(c for c in doc["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    modules = {f"fieldkit.{p.stem}" for p in (ROOT / "fieldkit").glob("*.py") if p.stem not in ("__init__", "__main__")}
    modules |= {f"fieldkit.{p.name}" for p in (ROOT / "fieldkit").iterdir() if (p / "__init__.py").exists()}
    assert modules - named == set(), f"not in any layer of pyproject.toml: {sorted(modules - named)}"
