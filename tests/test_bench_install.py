"""scripts/bench/install.py in tiny mode: every path of the install / verify / rollback bench runs
(real sshd, scp + model_signing by hand, the agent's verifier, a simulated device's rollback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "bench" / "install.py"


def test_install_bench_runs_in_tiny_mode() -> None:
    from sshd import skip_unless_available

    skip_unless_available()
    missing = [t for t in ("ssh", "scp", "openssl") if shutil.which(t) is None]
    if not (Path(sys.executable).parent / "model_signing").exists() and shutil.which("model_signing") is None:
        missing.append("model_signing")
    if missing:
        pytest.skip(f"the install bench needs {', '.join(missing)}")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], check=False, capture_output=True, text=True,
                          timeout=180, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["model"] == "anomaly-tabular" and doc["rounds"] == 1

    inst = doc["install"]
    assert set(inst) == {"fieldkit", "fieldkit-no-smoke", "fieldkit-cli", "manual"}
    for name, m in inst.items():
        assert m["first_s"] > 0 and m["reinstall_s"] > 0 and m["per_round_s"] > 0, name
        if name != "manual":
            assert m["ratio_vs_manual"] > 0, name
    assert doc["install_ratio"] > 0 and doc["install_ratio_no_smoke"] > 0
    assert {"connect (open_session)", "verify", "transfer", "place", "activate", "smoke", "commit"} <= set(
        doc["install_stages_s"])
    assert set(doc["manual_parts_s"]) == {"scp", "ssh verify + ln"}

    v = doc["verify"]
    assert v["files"] >= 3 and v["bytes"] > 0 and v["fieldkit_MBps"] > 0 and v["openssl_MBps"] > 0
    assert doc["verify_ratio"] > 0
    assert 0 < doc["ecdsa_ms"] < 1000 and 0 < doc["cryptography_ms"] < 1000

    rb = doc["rollback"]
    assert rb["n"] >= 1 and 0 < rb["rollback_call_s"] <= rb["with_connect_s"] and rb["smoke_stage_s"] > 0
    assert "1. install over SSH" in proc.stdout and "3. rollback" in proc.stdout
