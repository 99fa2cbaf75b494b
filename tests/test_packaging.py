"""A plain `pip install .` carries the bundled profiles and the agent (not only a checkout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT


def test_wheel_contains_profiles_agent_and_entry_points(tmp_path: Path) -> None:
    # Build from a copy of the committed tree: a stale build/ in the checkout must not hide a package
    # missing from pyproject.toml.
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheel = next(out.glob("fieldkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for top in ("fieldkit", "screens")
                for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    missing = {pkg for pkg in packages if f"{pkg}/__init__.py" not in names}
    assert not missing, f"packages not in the wheel (add them to [tool.setuptools] packages): {sorted(missing)}"
    for prof in ("generic-linux", "raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "x86-ipc"):
        assert f"fieldkit/bundled_profiles/{prof}.toml" in names
    assert "fieldkit/agent/server.py" in names and "fieldkit/agent/arq.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "fieldkit = fieldkit.cli:main" in text and "fieldkit-agent = fieldkit.agent.__main__:main" in text
