"""Find devices on a serial cable or the local link: ``fieldkit devices scan`` and the fleet's Scan (s).

Serial: the ports pyserial lists (device, description, USB VID:PID, manufacturer, serial number)
plus every path a ``--ports`` glob (or ``$FIELDKIT_SCAN_PORTS``) matches, less this machine's own
consoles and terminals (:func:`not_a_line`). Each port is opened exclusively without raising
DTR/RTS (:class:`~fieldkit.link.serialport.SerialPort` ``quiet=True``) and gets nothing but the serial
link's own handshake (:func:`~fieldkit.link.connect.serial_handshake`: ARQ session requests, then
the agent's hello) at each baud in turn — the inventory's and the profiles' bauds first, then
115200, 921600, 57600, 9600. When an agent answers, its ``identity`` is read once and the link
closed. A port held by another program is ``busy`` (with who holds it), one this user may not
open is ``permission_denied`` (with the group to join); neither is forced.

Time bound (serial): all ports at once; a port takes at most ``PROBE_S`` (0.6 s) per baud it
tries plus ``IDENTIFY_S`` (5 s) for the hello and identity of an agent that answered, so with the
four usual bauds a port without an agent is done in 2.4 s and the whole serial scan in
:func:`serial_bound` = 2.4 + 5 + 1 = 8.4 s at most, however many ports.

Network: an mDNS browse (python-zeroconf) for ``_ssh._tcp`` and ``_workstation._tcp`` for
``seconds`` (default 3): name, addresses, port, whether the inventory or a known_hosts file knows
it. Nothing else is sent: no sweeps of address ranges. Without a multicast-capable interface, or
when the sockets fail, the report says so instead of listing nothing.
"""

from __future__ import annotations

import glob
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fieldkit import wire
from fieldkit.errors import ConnectError, FieldkitError
from fieldkit.inventory import load_inventory
from fieldkit.link.portlock import busy_error, holder_record
from fieldkit.link.serialport import NoAgentAnswer, PortUnavailable, SerialPort
from fieldkit.link.targets import (
    SerialTarget,
    SshTarget,
    known_hosts_name,
    parse_target,
)
from fieldkit.locations import Home

COMMON_BAUDS = (115200, 921600, 57600, 9600)
"""Tried after the inventory's and the profiles' bauds, most likely first."""
PROBE_S = 0.6
"""Per baud: ARQ session requests go out at 0, 0.2 and 0.5 s; an agent answers in milliseconds."""
IDENTIFY_S = 5.0
"""For the hello and the identity of an agent that answered (a 2 KB identity takes 2 s at 9600 baud)."""
SLACK_S = 1.0
"""Opening and closing ports, starting threads."""
DEFAULT_SECONDS = 3.0
"""How long the mDNS browse listens by default."""
SERVICE_TYPES = ("_ssh._tcp.local.", "_workstation._tcp.local.")
PORTS_ENV = "FIELDKIT_SCAN_PORTS"
"""More port globs for every scan (``os.pathsep``-separated), e.g. ``/dev/ttyAMA*`` for a laptop
or gateway with an on-board UART; the TUI's Scan has no ``--ports``."""

ProgressFn = Callable[[Any], None]


def serial_bound(n_bauds: int) -> float:
    """The longest a serial scan with ``n_bauds`` bauds per port takes, whatever the port count."""
    return n_bauds * PROBE_S + IDENTIFY_S + SLACK_S


@dataclass
class SerialFinding:
    """One serial port and what answered on it."""

    device: str
    description: str | None = None
    status: str = "no_agent"
    """``agent`` | ``no_agent`` | ``busy`` | ``permission_denied``"""
    baud: int | None = None
    """The baud at which the agent's handshake succeeded."""
    vid_pid: str | None = None
    manufacturer: str | None = None
    serial_number: str | None = None
    agent_version: str | None = None
    hostname: str | None = None
    hardware: str | None = None
    """What the agent's identity says the device is (fieldkit.hardware.describe)."""
    suggested_profile: str | None = None
    profile_reason: str | None = None
    target: str | None = None
    """``serial://PATH?baud=B`` to add it with, when an agent answered."""
    in_inventory: str | None = None
    """The inventory device already using this port."""
    bauds_tried: list[int] = field(default_factory=list)
    holder: str | None = None
    group: str | None = None
    note: str | None = None
    """What the technician should know: a hint, text a console printed, why identity is missing."""

    @property
    def agent(self) -> bool:
        return self.status == "agent"

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["agent"] = self.agent
        return doc


@dataclass
class NetworkFinding:
    """One mDNS service instance."""

    name: str
    service: str
    addresses: list[str]
    port: int | None
    host: str | None = None
    """The advertised host name (``raspberrypi.local``)."""
    in_inventory: str | None = None
    known_host: bool = False
    target: str | None = None
    """``ssh://ADDRESS[:PORT]`` to add it with (port 22 for a ``_workstation`` advertisement)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScanReport:
    serial: list[SerialFinding] = field(default_factory=list)
    network: list[NetworkFinding] = field(default_factory=list)
    tried: dict[str, Any] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return any(f.agent for f in self.serial) or bool(self.network)

    def causes(self) -> list[str]:
        """Likely reasons nothing (or little) was found, from what was tried."""
        out: list[str] = []
        serial = self.tried.get("serial")
        if serial is not None and not any(f.agent for f in self.serial):
            if not serial["ports"]:
                out.append("no serial port found: is the USB-serial cable plugged in, and its driver loaded "
                           "(`dmesg | tail` shows ttyUSB/ttyACM when it is)? An on-board UART needs --ports, "
                           "e.g. --ports '/dev/ttyAMA*'")
            if any(f.status == "permission_denied" for f in self.serial):
                out.append("some ports may not be opened by this user: join the group named above")
            if any(f.status == "busy" for f in self.serial):
                out.append("some ports are held by another program (a terminal, another fieldkit)")
            if any(f.status == "no_agent" for f in self.serial):
                out.append("no fieldkit agent answered: is `fieldkit-agent serve --serial PORT` running on the "
                           "device (see scripts/fieldkit-agent-serial.service), on the port the cable is on, "
                           "at one of the bauds tried? Are TX/RX crossed and GND connected?")
        net = self.tried.get("network")
        if net is not None and not self.network:
            if net.get("unavailable"):
                out.append(f"mDNS could not run: {net['unavailable']}")
            else:
                out.append("no mDNS answer: the device may not advertise (avahi-daemon off), the switch or a "
                           "firewall may block multicast (UDP 5353), or the laptop is on another subnet; "
                           "add the device by address: fieldkit devices add NAME ssh://user@ADDRESS")
        return out

    def as_json(self) -> dict[str, Any]:
        return {"serial": [f.as_json() for f in self.serial], "network": [f.as_json() for f in self.network],
                "tried": self.tried, "causes": self.causes() if not self.found else []}


# ---- serial: which ports, which bauds ---------------------------------------------------------------
@dataclass(frozen=True)
class PortCandidate:
    device: str
    description: str | None = None
    vid_pid: str | None = None
    manufacturer: str | None = None
    serial_number: str | None = None


def _console_names() -> set[str]:
    try:
        return set(Path("/sys/class/tty/console/active").read_text().split())
    except OSError:
        return set()


def _own_ttys() -> set[int]:
    out = set()
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                out.add(os.fstat(fd).st_rdev)
        except OSError:
            pass
    return out


def not_a_line(path: str, consoles: set[str] | None = None, own: set[int] | None = None) -> str | None:
    """Why ``path`` must not be probed (None: it may be): it is no character device, this
    terminal, a virtual console, /dev/tty, /dev/console, /dev/ptmx or the kernel's console port.
    Writing a handshake there would land on a screen or the machine's own console."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat it ({exc.strerror})"
    if not stat.S_ISCHR(st.st_mode):
        return "not a character device"
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if major == 4 and minor < 64:
        return "a virtual console"
    if major == 5 and minor in (0, 1, 2):
        return "the terminal, the console or the pty multiplexer"
    if st.st_rdev in (own if own is not None else _own_ttys()):
        return "the terminal fieldkit runs in"
    if os.path.basename(os.path.realpath(path)) in (consoles if consoles is not None else _console_names()):
        return "this machine's kernel console"
    return None


def serial_candidates(globs: list[str] | tuple[str, ...] = ()) -> tuple[list[PortCandidate], dict[str, Any]]:
    """The ports to probe and what was looked at (``listed``, ``globs`` with their matches, ``skipped``)."""
    from serial.tools import list_ports

    listed: list[PortCandidate] = []
    for p in list_ports.comports():
        vid_pid = f"{p.vid:04X}:{p.pid:04X}" if p.vid is not None and p.pid is not None else None
        desc = p.description if p.description and p.description != "n/a" else None
        listed.append(PortCandidate(p.device, desc, vid_pid, p.manufacturer, p.serial_number))
    matched: dict[str, list[str]] = {}
    for g in globs:
        matched[g] = sorted(glob.glob(g))
    candidates: list[PortCandidate] = []
    seen: set[str] = set()
    skipped: list[dict[str, str]] = []
    consoles, own = _console_names(), _own_ttys()
    extra = [PortCandidate(p, "pseudo-terminal" if p.startswith("/dev/pts/") else None)
             for paths in matched.values() for p in paths]
    for cand in listed + extra:
        real = os.path.realpath(cand.device)
        if real in seen:
            continue
        seen.add(real)
        why = not_a_line(cand.device, consoles, own)
        if why:
            skipped.append({"device": cand.device, "reason": why})
            continue
        candidates.append(cand)
    return candidates, {"listed": [c.device for c in listed], "globs": matched, "skipped": skipped}


def probe_bauds(home: Home) -> list[int]:
    """The inventory's serial bauds, the profiles' ``serial_baud``, then :data:`COMMON_BAUDS`."""
    from fieldkit.profiles import get_profile, list_profiles

    out: list[int] = []
    try:
        for dev in load_inventory(home):
            try:
                target = parse_target(dev.target)
            except FieldkitError:
                continue
            if isinstance(target, SerialTarget):
                out.append(target.baud)
    except FieldkitError:
        pass
    for info in list_profiles(home):
        if info.error is None:
            try:
                out.append(get_profile(info.name, home).transport.serial_baud)
            except FieldkitError:
                pass
    out.extend(COMMON_BAUDS)
    return list(dict.fromkeys(out))


def _inventory_serial(home: Home) -> dict[str, str]:
    """Real path of each serial port the inventory uses -> device name."""
    out: dict[str, str] = {}
    try:
        for dev in load_inventory(home):
            try:
                target = parse_target(dev.target)
            except FieldkitError:
                continue
            if isinstance(target, SerialTarget):
                out.setdefault(os.path.realpath(target.path), dev.name)
    except FieldkitError:
        pass
    return out


# ---- serial: one port ---------------------------------------------------------------------------------
def _console_text(heard: bytes) -> str | None:
    """Printable text a console printed at this baud (a login prompt, a bootloader), else None."""
    text = bytes(heard).replace(b"\r", b"").strip()
    if len(text) < 4:
        return None
    printable = sum(1 for b in text if 32 <= b < 127 or b in (9, 10))
    if printable < 0.9 * len(text):
        return None
    line = text.decode("ascii", "replace").splitlines()[-1].strip() or text.decode("ascii", "replace")
    return line[-60:]


def _identify(link: Any, finding: SerialFinding, home: Home, timeout: float) -> None:
    """Hello and identity into ``finding`` (what the agent answered, parsed at the boundary)."""
    hello = wire.parse_hello(link.agent, device=finding.device)
    finding.agent_version = hello.agent_version
    if "identity" not in hello.ops:
        finding.note = (f"agent {hello.agent_version or '?'} predates the identity operation: "
                        "update it on the device to see its hardware")
        return
    from fieldkit.hardware import describe, suggest_profile
    from fieldkit.profiles import list_profiles

    ident = wire.parse_result("identity", link.call("identity", timeout=timeout), device=finding.device)
    finding.hostname = ident.hostname
    finding.hardware = describe(ident)
    profiles = [p.name for p in list_profiles(home) if p.error is None]
    finding.suggested_profile, finding.profile_reason = suggest_profile(ident, profiles)


def probe_port(cand: PortCandidate, bauds: list[int], home: Home, *, deadline: float,
               cancel: threading.Event | None = None) -> SerialFinding:
    """Open ``cand`` quietly and try the handshake at each baud until an agent answers."""
    finding = SerialFinding(cand.device, cand.description, vid_pid=cand.vid_pid,
                            manufacturer=cand.manufacturer, serial_number=cand.serial_number)
    port = SerialPort(cand.device, bauds[0], quiet=True)
    try:
        port.open()
    except PortUnavailable as exc:
        if exc.status == "busy":  # fieldkit's own holder (the TUI, --watch) is named, with how to free it
            name = _inventory_serial(home).get(os.path.realpath(cand.device)) or "NAME"
            mine = holder_record(home, cand.device)
            if mine is not None and mine.get("pid") == os.getpid():  # the scan runs in the TUI that holds it
                finding.status, finding.holder = "busy", f"pid {os.getpid()} (this fieldkit)"
                finding.note = (f"this fieldkit holds the port: its session to {mine.get('device') or name} is open "
                                "(the device is already in the inventory)")
                return finding
            held = busy_error(home, cand.device, name, exc)
            if held is not exc and isinstance(held, PortUnavailable):
                finding.status, finding.holder, finding.note = "busy", held.holder, f"{held.message}; {held.hint}"
                return finding
        finding.status, finding.holder, finding.group, finding.note = exc.status, exc.holder, exc.group, exc.hint
        return finding
    except ConnectError as exc:
        finding.note = exc.message
        return finding
    try:
        for baud in bauds:
            if (cancel is not None and cancel.is_set()) or time.monotonic() + PROBE_S > deadline:
                finding.note = "stopped before trying every baud (cancelled or out of time)"
                break
            try:
                port.set_baud(baud)
            except OSError as exc:
                finding.note = str(exc)
                continue
            finding.bauds_tried.append(baud)
            remaining = max(0.5, min(IDENTIFY_S, deadline - time.monotonic() - PROBE_S))
            try:
                link = _handshake(port, cand.device, remaining)
            except NoAgentAnswer:
                text = _console_text(port.heard)
                if text and not finding.note:
                    finding.note = f"a console answered at {baud} baud, not the agent: {text!r}"
                continue
            except ConnectError as exc:  # a session answered, the hello did not work out
                finding.status, finding.baud, finding.note = "agent", baud, exc.message
                break
            finding.status, finding.baud, finding.note = "agent", baud, None
            finding.target = str(SerialTarget(cand.device, baud))
            try:
                _identify(link, finding, home, max(0.5, deadline - time.monotonic()))
            except FieldkitError as exc:
                finding.note = f"the agent answered, but its identity did not: {exc.message}"
            finally:
                link.close("scan done")
            break
    finally:
        port.close()
    return finding


def _handshake(port: SerialPort, name: str, timeout: float) -> Any:
    from fieldkit.link.connect import serial_handshake

    return serial_handshake(port, name=name, session_timeout=PROBE_S, timeout=timeout, close_port=False)


def scan_serial(home: Home, globs: list[str] | tuple[str, ...] = (), *, cancel: threading.Event | None = None,
                on_port: ProgressFn | None = None, bauds: list[int] | None = None
                ) -> tuple[list[SerialFinding], dict[str, Any]]:
    """Probe every candidate port at once; returns the findings (in port order) and what was tried."""
    started = time.monotonic()
    globs = list(globs) + [g for g in os.environ.get(PORTS_ENV, "").split(os.pathsep) if g]
    candidates, looked = serial_candidates(globs)
    bauds = bauds or probe_bauds(home)
    bound = serial_bound(len(bauds))
    deadline = started + bound - SLACK_S / 2
    results: dict[str, SerialFinding] = {}
    done = threading.Condition()

    def run(cand: PortCandidate) -> None:
        try:
            finding = probe_port(cand, bauds, home, deadline=deadline, cancel=cancel)
        except Exception as exc:  # a bug on one port must not lose the others
            finding = SerialFinding(cand.device, cand.description, note=f"probe failed: {exc}")
        with done:
            results[cand.device] = finding
            done.notify_all()
        if on_port is not None:
            on_port(finding)

    for cand in candidates:  # daemon threads: a port still closing never holds the CLI at exit
        threading.Thread(target=run, args=(cand,), name=f"scan-{cand.device}", daemon=True).start()
    with done:
        while len(results) < len(candidates):
            left = started + bound - time.monotonic()
            if left <= 0:
                break
            done.wait(min(left, 0.1))
        snapshot = dict(results)
    inventory = _inventory_serial(home)
    findings = []
    for cand in candidates:
        f = snapshot.get(cand.device) or SerialFinding(
            cand.device, cand.description, vid_pid=cand.vid_pid, manufacturer=cand.manufacturer,
            serial_number=cand.serial_number, note=f"no answer within the scan's bound of {bound:.1f} s")
        f.in_inventory = inventory.get(os.path.realpath(cand.device))
        findings.append(f)
    tried = {**looked, "ports": [c.device for c in candidates], "bauds": bauds, "probe_s_per_baud": PROBE_S,
             "bound_s": round(bound, 2), "seconds": round(time.monotonic() - started, 2)}
    return findings, tried


# ---- network: mDNS ------------------------------------------------------------------------------------
_IFF_UP, _IFF_LOOPBACK, _IFF_MULTICAST = 0x1, 0x8, 0x1000
_SIOCGIFFLAGS = 0x8913


def _if_flags(name: str) -> int | None:
    """The interface's flags as this process's network namespace sees them (Linux ioctl)."""
    import fcntl
    import socket
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            raw = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, struct.pack("16s16x", name.encode()[:15]))
    except OSError:
        return None
    return struct.unpack("16xH14x", raw)[0]


def multicast_interfaces(flags: Callable[[str], int | None] | None = None,
                         names: list[str] | None = None) -> list[str] | None:
    """Interfaces that are up, not loopback, with multicast on; None where it cannot be told.

    ``flags`` and ``names`` replace the ioctl and ``socket.if_nameindex()`` (tests)."""
    import socket

    read = flags or _if_flags
    try:
        names = names if names is not None else [n for _, n in socket.if_nameindex()]
    except OSError:
        return None
    out, known = [], False
    for name in names:
        f = read(name)
        if f is None:
            continue
        known = True
        if f & _IFF_UP and f & _IFF_MULTICAST and not f & _IFF_LOOPBACK:
            out.append(name)
    return out if known or not names else None


class _Matcher:
    """Is an advertised host already in the inventory, or in a known_hosts file?"""

    def __init__(self, home: Home) -> None:
        from fieldkit.link.hostkeys import KnownHosts
        from fieldkit.link.sshconfig import resolve_ssh_target

        self.ssh: list[tuple[str, set[str], int]] = []  # (device, names/addresses, port)
        try:
            devices = load_inventory(home)
        except FieldkitError:
            devices = []
        for dev in devices:
            try:
                target = parse_target(dev.target)
                if not isinstance(target, SshTarget):
                    continue
                resolved = resolve_ssh_target(target)
                names = {target.host.lower(), resolved.hostname.lower()}
                self.ssh.append((dev.name, names, resolved.port))
            except FieldkitError:
                continue
        try:
            self.known = KnownHosts.load(home)
        except FieldkitError:
            self.known = None

    def inventory(self, names: set[str], port: int | None) -> str | None:
        for dev, have, dev_port in self.ssh:
            if have & names and (port is None or port == dev_port):
                return dev
        return None

    def known_host(self, names: set[str], port: int) -> bool:
        if self.known is None:
            return False
        return any(self.known.for_name(known_hosts_name(n, port)) for n in names)


def _host_names(info: Any) -> tuple[str | None, list[str], set[str]]:
    host = (info.server or "").rstrip(".") or None
    addresses = sorted(set(info.parsed_addresses()))
    names = {a.lower() for a in addresses}
    if host:
        names |= {host.lower(), host.lower().removesuffix(".local")}
    return host, addresses, names


def _finding(info: Any, service: str, name: str, matcher: _Matcher) -> NetworkFinding:
    host, addresses, names = _host_names(info)
    ssh = service.startswith("_ssh.")
    ssh_port = int(info.port) if ssh and info.port else 22  # _workstation advertises port 9
    instance = name[: -len(service) - 1] if name.endswith("." + service) else name
    address = next((a for a in addresses if ":" not in a), addresses[0] if addresses else host)
    target = None
    if address:
        shown = f"[{address}]" if ":" in address else address
        target = f"ssh://{shown}" + (f":{ssh_port}" if ssh_port != 22 else "")
    return NetworkFinding(instance, service.rstrip("."), addresses, int(info.port) if info.port else None, host,
                          matcher.inventory(names, ssh_port if ssh else None), matcher.known_host(names, ssh_port),
                          target)


def scan_network(home: Home, seconds: float = DEFAULT_SECONDS, *, cancel: threading.Event | None = None
                 ) -> tuple[list[NetworkFinding], dict[str, Any]]:
    """Browse mDNS for SSH services for ``seconds``; what was found, and what was tried."""
    started = time.monotonic()
    tried: dict[str, Any] = {"services": [s.rstrip(".") for s in SERVICE_TYPES], "seconds": seconds,
                             "interfaces": multicast_interfaces()}
    if tried["interfaces"] == []:
        tried["unavailable"] = ("no network interface is up with multicast (plug in the Ethernet cable, "
                                "or bring the interface up)")
        return [], tried
    try:
        from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf
    except ImportError as exc:
        tried["unavailable"] = f"python-zeroconf is not installed ({exc}); reinstall fieldkit"
        return [], tried
    try:
        zc = Zeroconf(ip_version=IPVersion.V4Only)
    except (OSError, RuntimeError) as exc:  # RuntimeError: no interface with an IPv4 address
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        tried["unavailable"] = f"cannot open the mDNS sockets ({text})"
        return [], tried
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def changed(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            with lock:
                if (service_type, name) not in seen:
                    seen.append((service_type, name))

    matcher = _Matcher(home)
    found: dict[tuple[str, str], NetworkFinding] = {}
    browser = None
    try:
        browser = ServiceBrowser(zc, list(SERVICE_TYPES), handlers=[changed])
        deadline = started + seconds
        resolved = 0
        while time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
            with lock:
                pending = seen[resolved:]
            for service_type, name in pending:
                left_ms = int((deadline - time.monotonic()) * 1000)
                info = zc.get_service_info(service_type, name, timeout=max(200, left_ms))
                resolved += 1
                if info is not None:
                    found[(service_type, name)] = _finding(info, service_type, name, matcher)
            if not pending:
                time.sleep(0.05)
    except OSError as exc:
        tried["unavailable"] = f"mDNS failed: {exc.strerror or exc}"
    finally:
        if browser is not None:
            browser.cancel()
        zc.close()
    tried["answers"] = len(seen)
    return sorted(found.values(), key=lambda f: (f.name.lower(), f.service)), tried


# ---- both ---------------------------------------------------------------------------------------------
def scan(home: Home, *, serial: bool = True, network: bool = True, globs: list[str] | tuple[str, ...] = (),
         seconds: float = DEFAULT_SECONDS, cancel: threading.Event | None = None,
         on_port: ProgressFn | None = None) -> ScanReport:
    """Serial and network at once; agents found are recorded in the operator journal when there is one."""
    report = ScanReport()
    net: dict[str, Any] = {}

    def browse() -> None:
        try:
            net["result"] = scan_network(home, seconds, cancel=cancel)
        except Exception as exc:  # a zeroconf surprise must not lose the serial results
            net["result"] = ([], {"services": [t.rstrip(".") for t in SERVICE_TYPES], "seconds": seconds,
                                  "unavailable": f"mDNS failed: {exc}"})

    worker = threading.Thread(target=browse, name="scan-mdns", daemon=True) if network else None
    if worker is not None:
        worker.start()
    if serial:
        report.serial, report.tried["serial"] = scan_serial(home, globs, cancel=cancel, on_port=on_port)
    if worker is not None:
        worker.join(seconds + 5.0)
        report.network, report.tried["network"] = net.get("result") or (
            [], {"services": [t.rstrip(".") for t in SERVICE_TYPES], "seconds": seconds,
                 "unavailable": "the mDNS browse did not finish"})
    _journal(home, report)
    return report


def _journal(home: Home, report: ScanReport) -> None:
    """One entry per agent that answered (the scan talked to it); without an operator identity
    (or a journal this user cannot write) the scan still reports, and says it did not record."""
    agents = [f for f in report.serial if f.agent]
    if not agents:
        return
    from fieldkit.journal import Journal

    try:
        with Journal.open(home) as journal:
            for f in agents:
                journal.record(f.target or f.device, "scan.agent", "ok",
                               {"device": f.device, "baud": f.baud, "agent_version": f.agent_version,
                                "hostname": f.hostname, "hardware": f.hardware})
        report.tried["journal"] = "recorded"
    except (FieldkitError, OSError) as exc:
        report.tried["journal"] = f"not recorded: {exc.message if isinstance(exc, FieldkitError) else exc}"
