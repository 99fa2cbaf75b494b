"""The test ONNX models, built once by scripts/make_models.py and shared by every test.

``model_dir()`` returns a directory holding all models; ``model_paths()`` maps model name to file.
Tests use the session fixture ``models`` (import it into the test module: ``from models import
models``). The directory is keyed by a hash of make_models.py and the onnx/onnxruntime versions,
so editing the script rebuilds it. Concurrent pytest processes are safe: each builds into a
private temp dir and renames it into place atomically; a loser of the race uses the winner's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import pytest
except ImportError:  # scripts/bench/ use model_paths() with fieldkit[scripts] installed, without pytest
    pytest = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_models.py"
NAMES = ("mobilenetv2-like", "mobilenetv2-like-int8", "anomaly-tabular")
MARKER = "COMPLETE"

_built: dict[str, Path] = {}


def _key() -> str:
    from importlib import metadata

    h = hashlib.sha256(SCRIPT.read_bytes())
    for dist in ("onnx", "onnxruntime", "numpy"):
        try:
            h.update(f"{dist}={metadata.version(dist)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none;".encode())
    return h.hexdigest()[:16]


def model_dir() -> Path:
    """Directory with every test model, building it on first use (about 3 s)."""
    if "dir" in _built:
        return _built["dir"]
    final = Path(tempfile.gettempdir()) / f"fieldkit-test-models-{_key()}"
    if not (final / MARKER).exists():
        work = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            proc = subprocess.run([sys.executable, str(SCRIPT), str(work)], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"scripts/make_models.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            missing = [n for n in NAMES if not (work / f"{n}.onnx").is_file()]
            if missing:
                raise RuntimeError(f"scripts/make_models.py did not write {missing}")
            (work / MARKER).write_text(proc.stdout)
            try:
                os.rename(work, final)  # atomic; fails if another process got there first
            except OSError:
                if not (final / MARKER).exists():
                    raise RuntimeError(f"{final} exists but is incomplete; remove it and rerun")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _built["dir"] = final
    return final


def model_paths() -> dict[str, Path]:
    """Model name (without .onnx) -> path."""
    d = model_dir()
    return {n: d / f"{n}.onnx" for n in NAMES}


if pytest is not None:
    @pytest.fixture(scope="session")
    def models() -> dict[str, Path]:
        return model_paths()
