"""The device's CPU load without fieldkit's own: real busy processes and threads, real /proc.

The machine may be busy with anything else while these run, so they assert relations between
what the probe reports and what the busy parts really used (read from their own /proc entries
over the same call), never absolute load figures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fieldkit.agent import probes, selfcpu
from fieldkit.health import evaluate
from fieldkit.profiles import get_profile

HZ = selfcpu.clock_ticks()
CORES = os.cpu_count() or 1
WINDOW = 1.0
SLACK = 4 * 100.0 / (HZ * WINDOW * CORES)  # 4 ticks, in percent of all cores: tick sampling at the ends
SHARE = 0.8  # what the busy part used over the whole call; the probe's window is a little shorter
ATTEMPTS = 6

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return sum(int(f) for f in fields[11:15])


def _share(ticks: int, window_s: float) -> float:
    """Ticks as a percentage of all cores over the window."""
    return 100.0 * ticks / (HZ * window_s * CORES)


def _consistent(cpu: dict) -> None:
    assert cpu["percent"] == pytest.approx(cpu["raw_percent"] - cpu["excluded_self_percent"], abs=0.15)
    assert 0.0 <= cpu["percent"] <= cpu["raw_percent"] <= 100.0
    assert cpu["window_s"] >= WINDOW - 0.01
    assert "minus fieldkit's own CPU time" in cpu["method"]


def _wait_until_busy(pid: int) -> None:
    deadline = time.monotonic() + 10
    start = _ticks(pid)
    while _ticks(pid) == start:  # it has started spinning (the interpreter is up)
        assert time.monotonic() < deadline, "the busy process never ran"
        time.sleep(0.02)


def _sample(busy_pid: int) -> tuple[dict, float, float]:
    """probes.cpu over WINDOW, with what ``busy_pid`` and this process used over the same call
    (percent of all cores). On a crowded machine the busy part may get too little of a core to
    tell anything apart: then it samples again, a bounded number of times."""
    for _ in range(ATTEMPTS):
        before_busy, before_self = _ticks(busy_pid), _ticks(os.getpid())
        t0 = time.monotonic()
        cpu = probes.cpu(WINDOW)
        window = time.monotonic() - t0
        used = _share(_ticks(busy_pid) - before_busy, window)
        own = _share(_ticks(os.getpid()) - before_self, window)
        if used > 3 * SLACK:
            return cpu, used, own
    raise AssertionError(f"the busy part got {used:.1f} % of all cores in {ATTEMPTS} tries: too little to measure")


def test_agents_own_busy_thread_is_excluded() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin, daemon=True)
    worker.start()
    try:
        cpu, used, _ = _sample(os.getpid())
    finally:
        stop.set()
        worker.join()
    _consistent(cpu)
    # this process's own CPU time in the window is excluded (other fieldkit processes running on
    # this machine may add to it: the unrelated-process test shows nothing else is excluded)
    assert cpu["excluded_self_percent"] >= used * SHARE - SLACK
    assert cpu["percent"] <= cpu["raw_percent"] - used * SHARE + SLACK


def test_a_busy_child_of_the_agent_is_excluded() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        _wait_until_busy(child.pid)
        cpu, used, _ = _sample(child.pid)
    finally:
        child.kill()
        child.wait()
    _consistent(cpu)
    assert cpu["excluded_self_percent"] >= used * SHARE - SLACK
    assert cpu["percent"] <= cpu["raw_percent"] - used * SHARE + SLACK


def test_an_unrelated_busy_process_is_counted() -> None:
    # started through a shell that exits at once: the busy process is not this process's
    # descendant (it is reparented), exactly like any other program on the device
    out = subprocess.run(["/bin/sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!', BUSY],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    pid = int(out.strip())
    try:
        _wait_until_busy(pid)
        ppid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        assert ppid != os.getpid()
        cpu, used, own = _sample(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
    _consistent(cpu)
    # the device's load includes it: what fieldkit excluded (this idle process, other fieldkit
    # processes that happen to run here) never takes the busy program's time with it
    assert cpu["percent"] >= used * SHARE - SLACK
    assert own < 2 * SLACK


@pytest.mark.parametrize("argv, mine", [
    (["python3", "/home/pi/.cache/fieldkit/agent-0123456789abcdef.pyz", "serve", "--stdio"], True),
    (["/usr/bin/python3", "/tmp/x/agent-ab.pyz", "bench", "--settings-json", "{}"], True),
    (["/usr/bin/python3", "-m", "fieldkit.agent", "serve", "--serial", "/dev/ttyS0"], True),
    (["/usr/bin/python3", "/usr/local/bin/fieldkit-agent", "serve", "--serial", "/dev/ttyS0"], True),
    (["/venv/bin/python", "/venv/bin/fieldkit", "health", "--all"], True),
    (["python3", "-m", "fieldkit", "demo"], True),
    (["python3.6", "-u", "-X", "dev", "/x/agent-ab.pyz", "smoke"], True),
    (["/usr/local/bin/fieldkit-agent", "recover", "--root", "/"], True),
    (["python3", "/srv/app/agent-ab.pyz", "train"], False),
    (["python3", "/srv/inference/server.py", "--model", "fieldkit"], False),
    (["python3", "-c", "import fieldkit.agent"], False),
    ([], False),
])
def test_what_counts_as_fieldkit(argv: list[str], mine: bool) -> None:
    assert selfcpu.is_fieldkit_cmdline(argv) is mine


def test_hostile_proc_entries_are_skipped(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, stat in {"1": b"1 (init) S 0 " + b"0 " * 40, "7": b"7 (python3) (x) S 7 " + b"3 " * 40,
                      "8": b"garbage", "9": b"9 (x) S 1 1 1"}.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "stat").write_bytes(stat)
    (proc / "7" / "cmdline").write_bytes(b"python3\0agent-x.pyz\0serve\0")
    trees = selfcpu.snapshot(str(proc), self_pid=1)
    # pid 7 is its own parent (a loop) and a fieldkit agent; 8 and 9 cannot be read
    assert trees == {(1, 0): 0, (7, 3): 12}
    assert selfcpu.snapshot(str(tmp_path / "missing")) is None
    assert selfcpu.ticks_between(None, trees) == (0, 0)
    assert selfcpu.ticks_between({(7, 3): 20}, {(7, 3): 12, (5, 1): 4}) == (4, 2)


def test_the_check_says_how_cpu_was_measured() -> None:
    profile = get_profile("generic-linux")
    raw = {"cpu": {"count": 2, "percent": 12.0, "raw_percent": 15.2, "excluded_self_percent": 3.2,
                   "window_s": 0.5, "per_core": [], "load": None, "method": "..."}}
    cpu = next(c for c in evaluate(raw, profile, None) if c.name == "cpu")
    assert cpu.status == "ok" and cpu.value == 12.0
    assert cpu.message.startswith("CPU busy 12 % over 0.5 s (fieldkit's own 3 % excluded; warn at")
    old = {"cpu": {"count": 2, "percent": 97.0, "per_core": [], "load": None}}  # an agent from before
    cpu = next(c for c in evaluate(old, profile, None) if c.name == "cpu")
    assert cpu.status == "crit" and "fieldkit's own work included: older agent" in cpu.message
    assert "at or above the critical limit" in cpu.message
