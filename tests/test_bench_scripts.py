"""Every benchmark in scripts/bench/ runs in the suite, in its tiny mode, so none can rot.

The convention, for every ``scripts/bench/*.py`` (a file starting with ``_`` is a helper, not a
benchmark): it accepts ``--tiny`` (a few seconds to a minute: every part runs once, on small
inputs, and nothing is judged on timing, so a busy machine cannot fail it) and ``--json`` (the
last line printed on stdout is one JSON object, the summary). A benchmark calls
``_needs.require(...)`` first: what it lacks (a Python package of the ``scripts`` extra, a program
such as sshd) ends it with exit status 2 and a message starting with ``_needs.MARKER``, and this
test then skips it, naming what is missing. Any other non-zero exit, or a traceback, fails.

A new benchmark is picked up by the glob; :data:`CHECKS` may add what its summary must hold
(beyond being a JSON object) and :data:`TIMEOUTS` a longer limit than :data:`DEFAULT_TIMEOUT`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "bench"))
from _needs import MARKER  # noqa: E402

BENCHMARKS = sorted(p for p in (ROOT / "scripts" / "bench").glob("*.py") if not p.name.startswith("_"))
DEFAULT_TIMEOUT = 300
TIMEOUTS = {"rollout.py": 600}


def check_install(doc: dict, stdout: str) -> None:
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
    assert "1. install over SSH" in stdout and "3. rollback" in stdout


def check_release_sign(doc: dict, stdout: str) -> None:
    rows = {r["what"]: r for r in doc["rows"]}
    assert set(rows) == {"sign (API)", "verify (API)", "sign (CLI)", "verify (CLI)", "sha256 of model"}
    assert all(r["fieldkit_s"] > 0 and r["ratio"] is not None for r in rows.values())


def check_rollout(doc: dict, stdout: str) -> None:
    assert doc["devices"] == 4 and doc["rollout_s"] > 0 and doc["sequential_s"] > 0 and doc["ratio"] > 0


def check_versions(doc: dict, stdout: str) -> None:
    assert doc["devices"] == 2 and doc["all_ok"] and doc["ratio"] > 0 and doc["cpu_s_per_device"] > 0


def check_bench_overhead(doc: dict, stdout: str) -> None:
    assert doc["model"] == "anomaly-tabular.onnx" and doc["rounds"] == 1 and doc["runs"] == 50
    assert doc["fieldkit_p50_ms"] > 0 and doc["plain_p50_ms"] > 0 and doc["ratio"] > 0


def check_journal(doc: dict, stdout: str) -> None:
    assert doc["entries"] == 300
    for key in ("appends_per_s", "raw_sqlite_full_commits_per_s", "verify_per_s", "sync_per_s_batch", "sync_per_s_all"):
        assert doc[key] > 0, key


def check_tui_startup(doc: dict, stdout: str) -> None:
    assert doc["devices"] == 2 and doc["rounds"] == 1 and doc["size"] == "120x35"
    assert doc["fieldkit_s"] > 0 and doc["minimal_s"] > 0 and doc["ratio"] > 0
    assert doc.get("cpu_ratio", 1) > 0
    assert "CPU used until the rows were shown" in stdout or "cpu_ratio" not in doc


def check_upload_progress(doc: dict, stdout: str) -> None:
    ways = doc["ways"]
    assert set(ways) == {"paced + acknowledged", "fixed 256 KiB (before)"}
    paced = ways["paced + acknowledged"]
    assert paced["ok"] and paced["readings_before_the_end"] >= 2 and 0 < paced["line_share"] <= 1.05


CHECKS: dict[str, Callable[[dict, str], None]] = {
    "install.py": check_install, "release_sign.py": check_release_sign, "rollout.py": check_rollout,
    "versions.py": check_versions, "bench_overhead.py": check_bench_overhead, "journal.py": check_journal,
    "tui_startup.py": check_tui_startup, "upload_progress.py": check_upload_progress,
}


def test_the_glob_finds_the_benchmarks() -> None:
    names = {p.name for p in BENCHMARKS}
    assert {"install.py", "release_sign.py", "rollout.py", "versions.py", "tui_startup.py"} <= names


@pytest.mark.parametrize("script", [pytest.param(p, id=p.name, marks=pytest.mark.timeout(
    TIMEOUTS.get(p.name, DEFAULT_TIMEOUT) + 30)) for p in BENCHMARKS])
def test_benchmark_runs_in_tiny_mode(script: Path) -> None:
    timeout = TIMEOUTS.get(script.name, DEFAULT_TIMEOUT)
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--json"], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT))
    if proc.returncode == 2 and MARKER in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script.name} --tiny --json printed nothing"
    try:
        doc = json.loads(lines[-1])
    except ValueError:
        pytest.fail(f"{script.name} --json: the last line is not one JSON object: {lines[-1][:300]!r}")
    assert isinstance(doc, dict) and doc, lines[-1][:300]
    check = CHECKS.get(script.name)
    if check is not None:
        check(doc, proc.stdout)
