"""A plain `pip install .` carries the bundled profiles and the agent (not only a checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT


def test_wheel_contains_profiles_agent_and_entry_points(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("fieldkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for prof in ("generic-linux", "raspberry-pi-5", "jetson-orin-nano", "x86-ipc"):
        assert f"fieldkit/bundled_profiles/{prof}.toml" in names
    assert "fieldkit/agent/server.py" in names and "fieldkit/agent/arq.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "fieldkit = fieldkit.cli:main" in text and "fieldkit-agent = fieldkit.agent.__main__:main" in text
