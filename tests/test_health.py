"""`fieldkit health` end to end over `local:` links, and the evaluation rules."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import run_cli

from fieldkit.health import evaluate, worst
from fieldkit.profiles import get_profile


def _raw(**over):
    raw = {
        "cpu": {"count": 4, "percent": 10.0, "per_core": [10.0] * 4, "load": [0.4, 0.3, 0.2]},
        "memory": {"total": 8 << 30, "available": 6 << 30, "used_percent": 25.0, "swap_total": 0,
                   "swap_used": 0, "swap_used_percent": 0.0},
        "disks": [{"label": "root", "path": "/", "mount": "/", "total": 100 << 30, "free": 50 << 30, "used_percent": 50.0},
                  {"label": "models", "path": "/var/lib/fieldkit/models", "mount": "/", "total": 100 << 30,
                   "free": 50 << 30, "used_percent": 50.0}],
        "temperatures": [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 55.0, "trips": []}],
        "throttling": {"source": "vcgencmd", "raw": "0x0", "now": {"under_voltage": False, "throttled": False},
                       "since_boot": {}},
        "runtime": {"python": "3.11.2", "onnxruntime": "1.17.1", "providers": ["CPUExecutionProvider"]},
        "service": {"unit": "edge-inference.service", "state": "active"},
    }
    raw.update(over)
    return raw


def _by_name(checks):
    return {c.name: c for c in checks}


def test_a_healthy_pi_is_ok() -> None:
    checks = evaluate(_raw(), get_profile("raspberry-pi-5"), 0.1)
    assert worst([c.status for c in checks]) == "ok", [c for c in checks if c.status != "ok"]


@pytest.mark.parametrize("change, name, status, words", [
    ({"temperatures": [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 83.5, "trips": []}]},
     "temp:cpu-thermal", "crit", "83.5 °C"),
    ({"temperatures": [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 77.0, "trips": []}]},
     "temp:cpu-thermal", "warn", "77.0 °C"),
    ({"throttling": {"source": "vcgencmd", "raw": "0x50005", "now": {"under_voltage": True, "throttled": True},
                     "since_boot": {}}}, "throttling", "crit", "power supply"),
    ({"throttling": {"source": "vcgencmd", "raw": "0x50000", "now": {},
                     "since_boot": {"under_voltage": True}}}, "throttling", "warn", "since boot"),
    ({"service": {"unit": "edge-inference.service", "state": "failed"}}, "service", "crit", "not running"),
    ({"runtime": {"python": "3.11", "onnxruntime": None, "providers": []}}, "onnxruntime", "warn", "cannot be benchmarked"),
])
def test_thresholds_grade_with_reasons(change, name, status, words) -> None:
    c = _by_name(evaluate(_raw(**change), get_profile("raspberry-pi-5"), 0.0))[name]
    assert c.status == status
    assert words in c.message


def test_clock_offset_and_missing_sensors() -> None:
    checks = _by_name(evaluate(_raw(temperatures=[], throttling={}), get_profile("generic-linux"), -45.0))
    assert checks["clock"].status == "crit" and "behind" in checks["clock"].message
    assert checks["temperature"].status == "n/a"
    assert checks["throttling"].status == "n/a"


def test_jetson_zone_override() -> None:
    raw = _raw(temperatures=[{"zone": "thermal_zone1", "type": "tj-thermal", "temp_c": 86.0, "trips": []}])
    prof = get_profile("jetson-orin-nano")
    c = _by_name(evaluate(raw, prof, 0.0))["temp:tj-thermal"]
    assert c.status == ("warn" if prof.thresholds.temperature_for("tj-thermal").warn <= 86 else "ok")


def test_health_json_over_local(home, device_root: Path) -> None:
    proc = run_cli("health", f"local:{device_root}", "--json")
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] in ("ok", "warn", "crit")
    for key in ("checks", "cpu", "memory", "disks", "temperatures", "throttling", "uptime_s",
                "clock_offset_s", "runtime", "agent"):
        assert key in doc, key
    assert abs(doc["clock_offset_s"]) < 1.0  # same machine, same clock
    assert {c["status"] for c in doc["checks"]} <= {"ok", "warn", "crit", "n/a"}
    assert all(c["message"] for c in doc["checks"])
    assert doc["agent"]["root"] == str(device_root)
    meminfo = Path("/proc/meminfo").read_text().split()
    assert doc["memory"]["total"] == int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024


def test_health_several_devices_and_one_unreachable(home, tmp_path: Path) -> None:
    roots = []
    for i in range(2):
        r = tmp_path / f"dev{i}"
        r.mkdir()
        roots.append(r)
        assert run_cli("devices", "add", f"dev{i}", f"local:{r}").returncode == 0
    assert run_cli("devices", "add", "gone", "local:/nonexistent/device-root").returncode == 0
    t0 = time.monotonic()
    proc = run_cli("health", "--all", "--json")
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    by = {d["device"]: d for d in doc["devices"]}
    assert set(by) == {"dev0", "dev1", "gone"}
    assert by["gone"]["status"] == "unreachable" and "not a directory" in by["gone"]["error"]
    assert by["dev0"]["status"] in ("ok", "warn", "crit")
    assert time.monotonic() - t0 < 30

    human = run_cli("health", "dev0", "dev1")
    assert human.returncode in (0, 1)
    assert "DEVICE" in human.stdout and "dev0" in human.stdout and "dev1" in human.stdout


def test_health_usage_errors() -> None:
    proc = run_cli("health")
    assert proc.returncode == 2 and "no device given" in proc.stderr
    proc = run_cli("health", "ftp://nope")
    assert proc.returncode == 2
