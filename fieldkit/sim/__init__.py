"""Simulated devices: the real agent on real files, reached over real SSH and a real pty.

* SSH devices are paramiko SSH servers on 127.0.0.1 (OS-picked port, a host key each) whose
  exec channel runs commands in a device root under a temp dir; fieldkit pushes and starts
  the agent there exactly as on a real device.
* Serial devices are two pty pairs joined by a relay, with ``fieldkit-agent serve --serial``
  on one end and the laptop's ``serial:///dev/pts/N`` on the other: the agent installed in the
  device's image where install.sh puts it, run by a simulated systemd unit that restarts it
  (:mod:`fieldkit.sim.unit`; ``fieldkit agent upgrade`` replaces it for real). Their image has the
  operator's public key (``fieldkit init``) in ``etc/fieldkit/operators``, as a real device's image
  would (``fieldkit agent bundle --operator-key``), so the operator may change them over serial;
  ``operator_key=False`` makes devices without one (they refuse every change over serial).

They are registered in the current FIELDKIT_HOME (inventory and known_hosts) while running and
removed again on stop. The health they report is this machine's real health.

A serial device's cable can behave like a real one (:class:`SerialLine`): ``baud`` throttles each
direction to ``baud / 10`` bytes/s (8N1), and ``line_errors`` is the probability per byte of a fault,
split evenly between a dropped, a flipped and an inserted byte (seeded with ``line_seed``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from fieldkit.locations import Home

DEVICE_DIRS = (
    "etc/fieldkit/trust",
    "var/lib/fieldkit/models",
    "var/lib/fieldkit/staging",
    "home/fieldkit",
)


#: the rates a serial port (and termios) knows; ptys ignore them, the relay's throttle does not
STANDARD_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
MAX_LINE_ERRORS = 0.01


@dataclass
class SerialLine:
    """How a simulated serial cable behaves (written to the sim's state file)."""

    baud: int
    """the device's and the laptop's baud rate (the target's ``?baud=``)"""
    bytes_per_second: float | None
    """each direction's throttle, ``baud / 10`` (8N1); None: as fast as the ptys go"""
    line_errors: float
    """probability per byte of a fault: a third each dropped, flipped, inserted"""
    line_seed: int | None
    """seed of the fault injector (None: a fresh random line each run)"""


@dataclass
class SimDevice:
    name: str
    target: str
    transport: str
    root: str
    host_key_fingerprint: str | None
    line: SerialLine | None = None
    """serial devices: their cable (None for SSH devices)"""


def serial_line(baud: int | None, line_errors: float = 0.0, line_seed: int | None = None) -> SerialLine:
    """Validate a simulated cable's settings (ConfigError, exit 2). ``baud`` None or 0: unthrottled
    at a nominal 115200 baud."""
    from fieldkit.errors import ConfigError

    if baud and baud not in STANDARD_BAUDS:
        raise ConfigError(f"--baud {baud} is not a serial port rate",
                          hint="use one of " + ", ".join(str(b) for b in STANDARD_BAUDS) + " (or 0: unthrottled)")
    if baud is not None and baud < 0:
        raise ConfigError(f"--baud {baud} is negative", hint="use 115200, or 0 for an unthrottled line")
    rate = float(line_errors)
    if not 0.0 <= rate <= MAX_LINE_ERRORS:  # also refuses NaN
        raise ConfigError(f"--line-errors {line_errors} is outside 0..{MAX_LINE_ERRORS}",
                          hint="a probability per byte: 1e-5 is a long cable in a plant, 1e-3 a very "
                               "noisy one; above 1e-2 no serial protocol gets a frame through")
    return SerialLine(baud=baud or 115200, bytes_per_second=baud / 10 if baud else None, line_errors=rate,
                      line_seed=line_seed)


def make_device_root(path: Path) -> Path:
    for d in DEVICE_DIRS:
        (path / d).mkdir(parents=True, exist_ok=True)
    return path


def provision_operator_key(home: Home, root: Path) -> Path | None:
    """Put the operator's public key (``fieldkit init``) into ``root/etc/fieldkit/operators``, named
    as the agent names it; None when there is no operator identity yet."""
    from fieldkit.agent.anchors import file_name
    from fieldkit.agent.omsverify import load_public_pem
    from fieldkit.errors import FieldkitError
    from fieldkit.journal.identity import load_identity

    try:
        ident = load_identity(home)
    except FieldkitError:
        return None
    key = load_public_pem(ident.public_key_pem)
    path = root / "etc/fieldkit/operators" / file_name(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.pem)
    return path


class Simulation:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, home: Home, *, ssh: int = 1, serial: int = 1, prefix: str = "sim",
                 profile: str = "generic-linux", base_dir: Path | None = None, operator_key: bool = True,
                 baud: int | None = None, line_errors: float = 0.0, line_seed: int | None = None) -> None:
        self.home = home
        self.line = serial_line(baud, line_errors, line_seed)
        """every serial device's cable (the fault injector of each is in ``faults``)"""
        self.operator_key = operator_key
        self.n_ssh = ssh
        self.n_serial = serial
        self.prefix = prefix
        self.profile = profile
        self._base = base_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.devices: list[SimDevice] = []
        self.ssh_servers: dict[str, Any] = {}
        self.relays: dict[str, Any] = {}
        self.faults: dict[str, Any] = {}
        self.agents: dict[str, subprocess.Popen] = {}
        self._registered: list[tuple[str, str | None]] = []

    def __enter__(self) -> "Simulation":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base(self) -> Path:
        if self._base is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fieldkit-sim-")
            self._base = Path(self._tmp.name)
        return self._base

    def start(self) -> "Simulation":
        from fieldkit.link.sshauth import ensure_client_key

        self.home.ensure()
        key_path = ensure_client_key(self.home)
        try:
            for i in range(1, self.n_ssh + 1):
                self._start_ssh(f"{self.prefix}-ssh-{i}", Path(str(key_path) + ".pub"))
            for i in range(1, self.n_serial + 1):
                self._start_serial(f"{self.prefix}-serial-{i}")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_ssh(self, name: str, client_pub: Path) -> None:
        from fieldkit.inventory import add_device
        from fieldkit.link.hostkeys import add_host_key, fingerprint
        from fieldkit.sim.ssh import SimSshServer

        root = make_device_root(self.base / name)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        env["FIELDKIT_AGENT_ROOT"] = str(root)
        # The simulated device's python3 is the one fieldkit runs on (with its onnxruntime).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
        server = SimSshServer(root, self.base / f"{name}.hostkey", [client_pub], env)
        server.start()
        self.ssh_servers[name] = server
        target = f"ssh://fieldkit@127.0.0.1:{server.port}"
        add_host_key(self.home, "127.0.0.1", server.port, server.host_key)
        add_device(self.home, name, target, profile=self.profile, replace=True)
        self._registered.append((name, f"[127.0.0.1]:{server.port}"))
        self.devices.append(SimDevice(name, target, "ssh", str(root), fingerprint(server.host_key)))

    def start_serial_agent(self, name: str) -> subprocess.Popen:
        """Start the device's agent unit: the installed zipapp, restarted as systemd restarts it
        (:mod:`fieldkit.sim.unit`); the Popen is the unit's."""
        from fieldkit.sim.unit import UNITS_ENV, installed_agent, unit_command, unit_name, write_systemctl

        relay = self.relays[name]
        root = self.base / name
        units = self.base / "units"
        units.mkdir(exist_ok=True)
        unit = unit_name(name)
        env = dict(os.environ, FIELDKIT_AGENT_UNIT=unit)
        env["FIELDKIT_AGENT_SYSTEMCTL"] = str(write_systemctl(self.base / "bin"))
        env[UNITS_ENV] = str(units)
        log = open(self.base / f"{name}.agent.log", "ab")
        proc = subprocess.Popen(
            unit_command(unit, units, [sys.executable, str(installed_agent(root)), "serve", "--serial",
                                       relay.device_path, "--baud", str(self.line.baud), "--root", str(root)]),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        log.close()
        self.agents[name] = proc
        return proc

    def _start_serial(self, name: str) -> None:
        from fieldkit.inventory import add_device
        from fieldkit.sim.ptyrelay import FaultInjector, PtyRelay

        from fieldkit.sim.unit import install_agent

        root = make_device_root(self.base / name)
        if self.operator_key:
            provision_operator_key(self.home, root)
        install_agent(root)  # as the device's install.sh did: the unit serves the installed agent
        line = self.line
        fault = None
        if line.line_errors:
            third = line.line_errors / 3
            seed = None if line.line_seed is None else f"{line.line_seed}/{name}"
            fault = self.faults[name] = FaultInjector(drop_rate=third, flip_rate=third, insert_rate=third, seed=seed)
        relay = PtyRelay(fault=fault, bytes_per_second=line.bytes_per_second)
        self.relays[name] = relay
        self.start_serial_agent(name)
        target = f"serial://{relay.laptop_path}?baud={line.baud}"
        add_device(self.home, name, target, profile=self.profile, replace=True)
        self._registered.append((name, None))
        self.devices.append(SimDevice(name, target, "serial", str(root), None, line))

    # ---- control (tests and the demo pull cables and reboot devices) ----------------------------
    def stop_device(self, name: str) -> None:
        """Power a device off: its SSH server or serial agent stops; its files remain."""
        if name in self.ssh_servers:
            self.ssh_servers[name].stop()
        elif name in self.agents:
            self._kill(self.agents.pop(name))

    def start_device(self, name: str) -> None:
        if name in self.ssh_servers:
            self.ssh_servers[name].start()
        elif name in self.relays:
            self.start_serial_agent(name)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def write_state(self, path: Path) -> None:
        doc = {"devices": [asdict(d) for d in self.devices]}
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(path)

    def stop(self) -> None:
        from fieldkit.inventory import remove_device
        from fieldkit.link.hostkeys import remove_host_entry

        for proc in self.agents.values():
            self._kill(proc)
        self.agents.clear()
        for server in self.ssh_servers.values():
            server.stop()
        self.ssh_servers.clear()
        for relay in self.relays.values():
            relay.close()
        self.relays.clear()
        self.faults.clear()
        for name, host in self._registered:
            try:
                remove_device(self.home, name)
            except Exception:
                pass
            if host:
                try:
                    remove_host_entry(self.home, host)
                except Exception:
                    pass
        self._registered.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def wait_forever() -> None:
    """Block until SIGINT or SIGTERM."""
    import signal
    import threading

    stop = threading.Event()
    # The handlers stay installed afterwards: a second Ctrl-C must not interrupt the clean-up
    # (stopping servers and agents, removing the devices from the inventory).
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass



@contextlib.contextmanager
def serial_agent(relay: Any, root: Path, log_path: Path, *, baud: int = 115200,
                 timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """The real agent serving ``--serial`` on ``relay``'s device end with ``root`` as its device root,
    from this checkout (no unit, no install: tests and benchmarks of the serial line itself). Yields
    once the agent holds its port (its lock taken), stops it on the way out. RuntimeError with the
    agent's log when it ends or does not take its port within ``timeout``."""
    import time

    from fieldkit.link.serialport import flock_holder

    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fieldkit.agent", "serve", "--serial", relay.device_path,
                                 "--baud", str(baud), "--root", str(root)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + timeout
        while not (flock_holder(relay.device_path) or "").startswith(f"pid {proc.pid} "):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulated serial agent did not take its port {relay.device_path}: "
                                   + Path(log_path).read_text(errors="replace")[-400:])
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
