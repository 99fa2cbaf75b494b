"""A simulated serial device's installed agent and its systemd unit.

A real serial device runs the agent ``install.sh`` installed (``/usr/local/lib/fieldkit/fieldkit-agent.pyz``)
under ``fieldkit-agent@PORT.service`` (``Restart=always``, processes killed as a group). A simulated one
does the same under its root: :func:`install_agent` puts the zipapp where install.sh does, and
``python -m fieldkit.sim.unit serve`` plays the unit:

* it runs the installed file (read again at every start, so an upgrade really changes what runs) in a
  process group of its own, and starts it again when it ends (after ``RESTART_S``; like systemd's
  default start limit, at most 5 starts in 10 s, then the unit has failed and stays down);
* ``systemctl [--no-block] restart UNIT`` (the program :func:`write_systemctl` writes, handed to the
  agent as ``FIELDKIT_AGENT_SYSTEMCTL``) makes it end the whole group (SIGTERM, SIGKILL after 5 s)
  and start it again. Other units (the profile's inference service) are simulated: a restart is
  counted in their state file and succeeds.
* A unit whose simulation was killed (its parent process is gone) stops, with its agent.

The unit's state, ``units/UNIT.json`` (``{"pid", "agent_pid", "starts", "failed"}``), lets tests
and the fake systemctl see it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

RESTART_S = 0.5
START_LIMIT = (5, 10.0)  # systemd's StartLimitBurst / StartLimitIntervalSec defaults
STOP_TIMEOUT_S = 5.0
UNITS_ENV = "FIELDKIT_SIM_UNITS"


def installed_agent(root: Path) -> Path:
    """Where install.sh puts the agent under a device root (the agent's own default path)."""
    from fieldkit.agent.models import DEFAULT_PATHS

    return Path(root) / DEFAULT_PATHS["agent"].lstrip("/")


def install_agent(root: Path, data: bytes | None = None) -> Path:
    """Install the agent zipapp (the one SSH pushes and the bundle carries, unless ``data``) as
    install.sh does: mode 0644, replaced atomically."""
    from fieldkit.fsutil import atomic_write
    from fieldkit.link.zipapp import agent_archive

    path = installed_agent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, agent_archive().data if data is None else data, mode=0o644, durable=False)
    return path


def unit_name(device: str) -> str:
    return f"fieldkit-agent@{device}.service"


def unit_state(units_dir: Path, unit: str) -> dict:
    try:
        return json.loads((Path(units_dir) / f"{unit}.json").read_text())
    except (OSError, ValueError):
        return {}


def write_systemctl(bin_dir: Path) -> Path:
    """The ``systemctl`` a simulated device's agent runs (FIELDKIT_AGENT_SYSTEMCTL)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "systemctl"
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m fieldkit.sim.unit systemctl \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def unit_command(unit: str, units_dir: Path, agent_cmd: list[str]) -> list[str]:
    return [sys.executable, "-m", "fieldkit.sim.unit", "serve", "--unit", unit, "--dir", str(units_dir), "--",
            *agent_cmd]


# ---- the unit -------------------------------------------------------------------------------------------
class _Unit:
    def __init__(self, unit: str, units_dir: Path, cmd: list[str]) -> None:
        self.unit = unit
        self.state_path = units_dir / f"{unit}.json"
        self.cmd = cmd
        self.wake = threading.Event()
        self.stop = False
        self.restart = False
        self.starts = 0
        self.recent: deque[float] = deque(maxlen=START_LIMIT[0])
        self.parent = os.getppid()

    def save(self, agent_pid: int | None, failed: bool = False) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "agent_pid": agent_pid, "starts": self.starts,
                                   "failed": failed}))
        tmp.replace(self.state_path)

    def on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self.restart = True
        else:
            self.stop = True
        self.wake.set()

    def end_group(self, proc: subprocess.Popen) -> None:
        """Like KillMode=control-group: SIGTERM to every process of the agent, SIGKILL after a while."""
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # what the agent left behind (a child on trial)
                except ProcessLookupError:
                    pass
            return

    def orphaned(self) -> bool:
        """The simulation that started this unit is gone (killed before it could stop its devices):
        the unit stops too, so no agent keeps a pty that a later relay will be given."""
        if os.getppid() != self.parent:
            self.stop = True
        return self.stop

    def run(self) -> int:
        self.parent = os.getppid()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        while not self.stop:
            now = time.monotonic()
            if len(self.recent) == START_LIMIT[0] and now - self.recent[0] < START_LIMIT[1] and not self.restart:
                self.save(None, failed=True)  # start request repeated too quickly: the unit has failed
                while not self.orphaned() and not self.restart:
                    self.wake.wait(0.5)
                    self.wake.clear()
                if self.stop:
                    break
            self.restart = False
            self.recent.append(now)
            self.starts += 1
            proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, start_new_session=True)
            self.save(proc.pid)
            threading.Thread(target=lambda p=proc: (p.wait(), self.wake.set()), daemon=True).start()
            while proc.poll() is None and not self.orphaned() and not self.restart:
                self.wake.wait(0.5)
                self.wake.clear()
            if self.stop or self.restart:
                self.end_group(proc)
            else:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the main process ended: the rest of the group goes
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + RESTART_S  # RestartSec
                while not self.orphaned() and not self.restart and time.monotonic() < deadline:
                    self.wake.wait(max(0.0, deadline - time.monotonic()))
                    self.wake.clear()
        self.save(None)
        return 0


def _systemctl(argv: list[str]) -> int:
    words = [a for a in argv if not a.startswith("-")]
    block = "--no-block" not in argv
    if len(words) != 2 or words[0] != "restart":
        print(f"systemctl (simulated device): only `restart UNIT` is simulated, not {' '.join(argv)}", file=sys.stderr)
        return 1
    unit = words[1]
    units_dir = Path(os.environ.get(UNITS_ENV) or "/nonexistent")
    state = unit_state(units_dir, unit)
    pid = state.get("pid")
    if not isinstance(pid, int):  # a unit the simulation does not run (the profile's inference service)
        if not units_dir.is_dir():
            print(f"Failed to restart {unit}: Unit {unit} not found.", file=sys.stderr)
            return 5
        tmp = units_dir / f".{unit}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"simulated": True, "starts": int(state.get("starts") or 0) + 1}))
        tmp.replace(units_dir / f"{unit}.json")
        return 0
    try:
        os.kill(pid, signal.SIGHUP)
    except (ProcessLookupError, PermissionError):
        print(f"Failed to restart {unit}: Unit {unit} is not running and cannot be restarted.", file=sys.stderr)
        return 1
    if block:  # wait for the job: the unit started again
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and unit_state(units_dir, unit).get("starts") == state.get("starts"):
            time.sleep(0.05)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["systemctl"]:
        return _systemctl(argv[1:])
    if argv[:1] == ["serve"] and "--" in argv:
        sep = argv.index("--")
        opts = dict(zip(argv[1:sep:2], argv[2:sep:2]))
        if "--unit" in opts and "--dir" in opts and argv[sep + 1:]:
            return _Unit(opts["--unit"], Path(opts["--dir"]), argv[sep + 1:]).run()
    print("usage: python -m fieldkit.sim.unit serve --unit UNIT --dir DIR -- CMD... | systemctl [--no-block] "
          "restart UNIT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
