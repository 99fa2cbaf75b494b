"""A broken or hostile device must not crash, hang or fool the laptop.

Each case runs the real CLI in a subprocess against a fake agent speaking the real protocol on a
real pseudo-terminal (tests/fakeagent.py): what reaches the technician is an exit code and a
message naming the operation and the field, never a traceback; nothing waits forever.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from conftest import run_cli
from fakeagent import GENESIS, FakeAgent

from fieldkit.journal import Journal
from fieldkit.locations import Home


def good_health() -> dict:
    """What a small, quiet device reports (the shapes fieldkit.agent.probes produces)."""
    return {
        "hostname": "fake", "os": "Linux", "kernel": "6.1", "machine": "aarch64", "uptime_s": 1234.0,
        "cpu": {"percent": 5.0, "count": 4, "load": [0.1, 0.1, 0.1]},
        "memory": {"total": 4 << 30, "available": 3 << 30, "used_percent": 25.0, "swap_total": 0,
                   "swap_used_percent": 0.0},
        "disks": [], "temperatures": [], "throttling": {},
        "runtime": {"python": "3.11.0", "onnxruntime": None}, "agent": {"version": "0.1.0"},
    }


def health_cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    t0 = time.monotonic()
    proc = run_cli("health", *args, timeout=timeout)
    assert time.monotonic() - t0 < timeout
    return proc.returncode, proc.stdout, proc.stderr


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


@pytest.mark.parametrize("bad, field", [
    ({"cpu": {"percent": "abc"}}, "cpu.percent"),
    ({"memory": [1, 2, 3]}, "memory"),
    ({"temperatures": [{"zone": "thermal_zone0", "type": "cpu", "temp_c": "hot"}]}, "temperatures"),
    ({"cpu": {"percent": 1e400}}, "cpu.percent"),  # JSON Infinity
])
def test_a_health_result_of_the_wrong_shape_is_a_device_error_naming_the_field(bad: dict, field: str) -> None:
    doc = good_health()
    doc.update(bad)
    with FakeAgent({"health": doc}) as fake:
        rc, out, err = health_cli(fake.target)
    assert_no_traceback(out + err)
    assert rc == 4, (out, err)
    assert "health" in out + err and field in out + err, (out, err)


def test_a_result_that_is_not_an_object_is_a_device_error() -> None:
    with FakeAgent({"health": [1, 2, 3]}) as fake:
        rc, out, err = health_cli(fake.target)
    assert_no_traceback(out + err)
    assert rc == 4 and "health" in out + err, (out, err)


def test_a_checkpoint_with_a_non_numeric_seq_is_reported_not_fatal(home: Home) -> None:
    head = {"journal_id": "abc", "seq": "seven", "hash": GENESIS}
    with FakeAgent({"health": good_health(),
                    "journal_checkpoint": {"previous": None, "entry": None, "head": head}}) as fake:
        rc, out, err = health_cli(fake.target)
    assert_no_traceback(out + err)
    assert rc in (0, 1), err  # health itself was measured and judged
    with Journal.open_readonly(home) as j:
        witness = [e for e in j.entries(action="journal.witness")]
    assert witness and witness[-1].outcome == "failed"
    assert "head.seq" in json.dumps(witness[-1].details)


def test_a_previous_checkpoint_of_the_wrong_shape_is_a_problem_not_a_crash(home: Home) -> None:
    head = {"journal_id": None, "seq": 0, "hash": GENESIS}
    previous = {"journal_id": "x", "seq": 1e400, "head": [], "time": None, "signature": {}}
    with FakeAgent({"health": good_health(),
                    "journal_checkpoint": {"previous": previous, "entry": None, "head": head}}) as fake:
        rc, out, err = health_cli(fake.target)
    assert_no_traceback(out + err)
    assert rc in (0, 1), err
    with Journal.open_readonly(home) as j:
        witness = [e for e in j.entries(action="journal.witness")]
    assert witness[-1].outcome == "failed" and "malformed checkpoint" in json.dumps(witness[-1].details)


def test_a_journal_that_always_says_more_does_not_hang_the_laptop(home: Home) -> None:
    head = {"journal_id": "j1", "seq": 10**6, "hash": GENESIS}
    endless = {"journal_id": "j1", "entries": [], "head": head, "more": True, "chain": {"ok": True}}
    with FakeAgent({"health": good_health(), "journal_read": endless,
                    "journal_checkpoint": {"previous": None, "entry": None, "head": head}}) as fake:
        rc, out, err = health_cli(fake.target, timeout=60)
        pages = fake.calls.count("journal_read")
    assert_no_traceback(out + err)
    assert rc in (0, 1), err
    assert pages <= 3, pages
    with Journal.open_readonly(home) as j:
        witness = [e for e in j.entries(action="journal.witness")]
    assert "sends none" in json.dumps(witness[-1].details)


def test_one_broken_device_never_stops_health_of_the_others(home: Home, device_root: Path) -> None:
    from fieldkit.inventory import add_device

    with FakeAgent({"health": {"cpu": "nonsense"}}) as fake:
        add_device(home, "broken", fake.target)
        add_device(home, "good", f"local:{device_root}")
        add_device(home, "nowhere", "ssh://127.0.0.1:1")
        rc, out, err = health_cli("--all", "--json")
    assert_no_traceback(out + err)
    doc = json.loads(out)
    by_name = {d["device"]: d for d in doc["devices"]}
    assert by_name["good"]["status"] in ("ok", "warn", "crit") and "error" not in by_name["good"]
    assert by_name["broken"]["status"] == "crit" and "cpu" in by_name["broken"]["error"]
    assert by_name["nowhere"]["status"] == "unreachable"
    assert rc in (3, 4) or rc == 1


def test_an_over_long_target_is_refused_with_a_clear_message() -> None:
    for target in ("ssh://" + "a" * 300, "x" * 5000, "local:/" + "a" * 2000):
        rc, out, err = health_cli(target)
        assert_no_traceback(out + err)
        assert rc == 2 and "not a device target" in err and "characters" in err, err


def test_the_journal_and_its_wal_are_private(home: Home) -> None:
    with Journal.open(home) as j:
        j.record("x", "test", "ok", {})
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{home.journal_db}{suffix}")
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, (suffix, oct(path.stat().st_mode))
    assert stat.S_IMODE(home.journal_db.stat().st_mode) == 0o600


def test_an_older_world_readable_journal_is_made_private_on_open(home: Home) -> None:
    with Journal.open(home) as j:
        j.record("x", "test", "ok", {})
    os.chmod(home.journal_db, 0o644)
    Journal.open(home).close()
    assert stat.S_IMODE(home.journal_db.stat().st_mode) == 0o600


def test_trust_without_a_terminal_exits_2_and_says_to_use_the_fingerprint(home: Home) -> None:
    from fieldkit.link.hostkeys import remove_host_entry
    from fieldkit.link.targets import parse_target
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=1, serial=0) as sim:
        name = sim.devices[0].name
        t = parse_target(sim.devices[0].target)
        remove_host_entry(home, f"[{t.host}]:{t.port}")  # a device never seen: trust would have to ask
        proc = run_cli("trust", name, input="")
    assert_no_traceback(proc.stdout + proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert "--fingerprint" in proc.stderr
