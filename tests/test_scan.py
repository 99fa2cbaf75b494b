"""``fieldkit devices scan`` and the fleet's Scan (issue 13): real ptys, the real agent, real mDNS.

Baud selection is tested honestly through the pty relay in UART mode: a pty accepts any speed, so
the relay reads the speed each side's program set on its pty and, when they differ, hands the
receiver what a UART at its speed samples from the sender's bits (garbage, framing errors as NUL).
The agent serves at 57600 behind a relay throttled to 57600 baud's byte rate; a scanner that did
not really set the port's speed, or took garbage for an answer, would report the wrong baud.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldkit.agent import AGENT_VERSION
from fieldkit.scan import (
    COMMON_BAUDS,
    PROBE_S,
    _console_text,
    multicast_interfaces,
    scan_network,
    scan_serial,
    serial_bound,
)
from fieldkit.sim import make_device_root
from fieldkit.sim.ptyrelay import PtyRelay, uart_resample

BAUDS = list(COMMON_BAUDS)  # every bundled profile says 115200, first of the common ones




@contextmanager
def serial_device(tmp_path: Path, *, baud: int = 115200, bytes_per_second: float | None = None,
                  uart: bool = False, name: str = "dev") -> Iterator[PtyRelay]:
    """The real agent serving ``--serial`` at ``baud`` on one end of a relay; yields the relay."""
    from fieldkit.link.serialport import flock_holder
    from fieldkit.sim import serial_agent

    relay = PtyRelay(bytes_per_second=bytes_per_second, uart=uart)
    try:
        with serial_agent(relay, make_device_root(tmp_path / name), tmp_path / f"{name}.agent.log", baud=baud):
            holder = flock_holder(relay.laptop_path)
            if holder is not None:
                pytest.skip(f"another process on this machine holds the test's pty {relay.laptop_path}: {holder}")
            yield relay
    finally:
        relay.close()


@contextmanager
def bare_pty() -> Iterator[tuple[int, str]]:
    """A pty with nothing behind it: (master fd, slave path)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def not_grabbed(*findings: dict) -> None:
    """Skip when a process outside this test grabbed one of its bare ptys between allocation and scan
    (a leaked ``serve --serial`` agent retrying a vanished /dev/pts/N takes the next pty with that
    number): the scanner reporting it busy is right, but the test can no longer say "no agent"."""
    for f in findings:
        if f["status"] == "busy":
            pytest.skip(f"another process on this machine holds the test's pty {f['device']}: {f['holder']}")


def speed_kept(relay: PtyRelay, baud: int) -> None:
    """Skip when something outside the test re-set the device pty's speed during the scan (an old
    agent's open_tty configured a port before trying its lock): the relay then no longer stands
    for a device at ``baud``."""
    if relay.speeds()[0] != baud:
        pytest.skip(f"another process changed the speed of the test's pty {relay.device_path} "
                    f"to {relay.speeds()[0]} during the scan")


def scan_json(*args: str, env: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    proc = run_cli("devices", "scan", "--json", *args, env=env, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def entry(doc: dict, path: str) -> dict:
    found = [e for e in doc["serial"] if e["device"] == path]
    assert len(found) == 1, doc
    return found[0]


# ---- the relay's UART emulation --------------------------------------------------------------------
def test_relay_garbles_bytes_between_mismatched_speeds_and_passes_them_when_equal(tmp_path) -> None:
    import serial

    payload = b"fieldkit \x00\x01\xfe\xff handshake"
    with PtyRelay(uart=True) as relay:
        dev = serial.Serial(relay.device_path, 57600, timeout=0.3)
        lap = serial.Serial(relay.laptop_path, 115200)
        try:
            def received() -> bytes:
                lap.write(payload)
                out = dev.read(len(payload))  # the first bytes may take a moment on a busy machine
                deadline = time.monotonic() + 30
                while not out and time.monotonic() < deadline:
                    out = dev.read(len(payload))
                while len(out) < len(payload) and (chunk := dev.read(256)):
                    out += chunk  # more until the line is quiet (garbage has its own length)
                return out

            garbled = received()
            while dev.read(256):
                pass  # anything longer than the payload
            assert garbled and garbled != payload
            assert relay.stats["baud_mismatch"] >= len(payload)
            lap.baudrate = 57600
            assert received() == payload
        finally:
            dev.close()
            lap.close()


@given(st.binary(max_size=64), st.sampled_from([9600, 57600, 115200, 921600]),
       st.sampled_from([9600, 57600, 115200, 921600]))
@settings(max_examples=200, deadline=None)
def test_uart_resample_never_raises_and_is_identity_at_equal_speeds(data: bytes, tx: int, rx: int) -> None:
    out = uart_resample(data, tx, rx)
    if tx == rx:
        assert out == data
    else:
        assert len(out) <= 5 * len(data)  # a frame per falling edge: at most 5 in a byte's 10 bits


@given(st.binary(max_size=600))
def test_console_text_from_any_bytes_is_short_printable_or_none(data: bytes) -> None:
    text = _console_text(data)
    assert text is None or (len(text) <= 60 and text.isprintable())


# ---- serial scan -----------------------------------------------------------------------------------
def test_scan_finds_the_agent_at_its_baud_through_the_throttling_relay(home, tmp_path) -> None:
    from fieldkit import wire
    from fieldkit.hardware import describe
    from fieldkit.journal import Journal
    from fieldkit.link.connect import open_link

    with serial_device(tmp_path, baud=57600, bytes_per_second=5760, uart=True) as relay:
        code, doc = scan_json("--serial", "--ports", relay.laptop_path)
        found = entry(doc, relay.laptop_path)
        not_grabbed(found)
        assert code == 0, doc
        speed_kept(relay, 57600)
        assert found["status"] == "agent" and found["agent"] is True, found
        assert found["baud"] == 57600
        assert found["bauds_tried"] == [115200, 921600, 57600]  # most likely first, stopped at the answer
        assert relay.stats["baud_mismatch"] > 0  # the wrong bauds really went over the line, garbled
        assert found["agent_version"] == AGENT_VERSION
        assert found["target"] == f"serial://{relay.laptop_path}?baud=57600"
        assert found["description"] == "pseudo-terminal"
        # the identity it reports is the one a normal connect at that target reads
        with open_link(found["target"], name="check", home=home, timeout=20) as link:
            ident = wire.parse_result("identity", link.call("identity", timeout=20), device="check")
        assert found["hostname"] == ident.hostname == socket.gethostname()
        assert found["hardware"] == describe(ident)
        assert found["suggested_profile"] and found["profile_reason"]
    with Journal.open_readonly(home) as journal:
        entries = journal.entries(action="scan.agent")
    assert [e.details["baud"] for e in entries] == [57600]
    assert doc["tried"]["journal"] == "recorded"


def test_a_pty_without_agent_is_no_agent_within_the_bound_and_hears_only_the_handshake(home) -> None:
    with bare_pty() as (master, path):
        findings, tried = scan_serial(home, [path])
        assert [f.device for f in findings] == [path]
        f = findings[0]
        not_grabbed(f.as_json())
        assert (f.status, f.agent, f.baud) == ("no_agent", False, None)
        assert f.bauds_tried == BAUDS
        assert tried["bauds"] == BAUDS and tried["bound_s"] == serial_bound(len(BAUDS))
        assert tried["seconds"] <= tried["bound_s"]
        assert tried["seconds"] >= len(BAUDS) * PROBE_S * 0.9  # it did listen at every baud
        # what reached the line: ARQ session requests (COBS frames between 0x00) and nothing else
        from fieldkit.agent.arqwire import T_CAPS, T_RESET
        from fieldkit.agent.cobs import decode

        sent = b""
        while select.select([master], [], [], 0)[0]:
            sent += os.read(master, 65536)
        frames = [decode(x) for x in sent.split(b"\0") if x]
        assert frames and {fr[0] for fr in frames} <= {T_RESET, T_CAPS} and frames[0][0] == T_RESET


def test_a_login_console_on_the_port_is_named_not_taken_for_an_agent(home) -> None:
    import threading

    with bare_pty() as (master, path):
        stop = threading.Event()

        def getty() -> None:  # a device's serial console: whatever arrives, it asks for a login
            while not stop.is_set():
                if select.select([master], [], [], 0.05)[0]:
                    os.read(master, 4096)
                    os.write(master, b"\r\nDebian GNU/Linux 12 cam-7 ttyS0\r\n\r\ncam-7 login: ")

        t = threading.Thread(target=getty, daemon=True)
        t.start()
        try:
            findings, _ = scan_serial(home, [path])
        finally:
            stop.set()
            t.join(5)
        f = findings[0]
        not_grabbed(f.as_json())
        assert f.status == "no_agent" and f.bauds_tried == BAUDS
        assert f.note == "a console answered at 115200 baud, not the agent: 'cam-7 login:'"


def test_a_port_held_by_another_process_is_busy_and_left_alone(home) -> None:
    with bare_pty() as (master, path):
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR|os.O_NOCTTY); "
             "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            findings, _ = scan_serial(home, [path])
        finally:
            holder.stdin.close()
            holder.wait(10)
        f = findings[0]
        assert f.status == "busy" and not f.agent and f.bauds_tried == []
        assert f.holder.startswith(f"pid {holder.pid} (python")
        assert not select.select([master], [], [], 0.2)[0]  # not one byte was sent


def test_a_port_the_tui_holds_is_named_with_how_to_free_it(home) -> None:
    """The same busy port, but the holder is a fieldkit session (its holder record names it)."""
    from fieldkit.inventory import add_device
    from fieldkit.link.portlock import holder_path

    with bare_pty() as (master, path):
        add_device(home, "kiosk", f"serial://{path}?baud=115200")
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR|os.O_NOCTTY); "
             "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            record = holder_path(home, path)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"pid": holder.pid, "program": "fieldkit", "port": path,
                                          "since": time.time(), "device": "kiosk"}))
            findings, _ = scan_serial(home, [path])
        finally:
            holder.stdin.close()
            holder.wait(10)
        f = findings[0]
        assert f.status == "busy" and f.bauds_tried == []
        assert f.holder == f"pid {holder.pid} (fieldkit)"
        assert "held by fieldkit" in f.note and "for kiosk" in f.note and "fieldkit devices release kiosk" in f.note


def test_a_port_this_very_fieldkit_holds_is_said_so(home) -> None:
    """The TUI's Scan runs in the process whose fleet session holds the port."""
    from fieldkit.link.portlock import claim, unclaim

    with bare_pty() as (master, path):
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            claim(home, path, "kiosk")
            findings, _ = scan_serial(home, [path])
        finally:
            unclaim(home, path)
            os.close(fd)
        f = findings[0]
        assert f.status == "busy" and f.bauds_tried == [] and f.holder == f"pid {os.getpid()} (this fieldkit)"
        assert "its session to kiosk is open" in f.note


def test_a_port_in_exclusive_mode_is_busy_even_for_root(home) -> None:
    import termios

    with bare_pty() as (master, path):
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            fcntl.ioctl(fd, termios.TIOCEXCL)  # what `screen` and others do; root could open it anyway
            findings, _ = scan_serial(home, [path])
        finally:
            fcntl.ioctl(fd, termios.TIOCNXCL)
            os.close(fd)
        assert findings[0].status == "busy" and findings[0].bauds_tried == []
        assert not select.select([master], [], [], 0.1)[0]


def test_uucp_lock_files_name_a_live_holder_and_stale_ones_are_ignored(tmp_path) -> None:
    from fieldkit.link.serialport import uucp_lock_holder

    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (tmp_path / "LCK..ttyUSB0").write_text(f"{sleeper.pid:>10}\n")  # the ASCII form minicom writes
        assert uucp_lock_holder("/dev/ttyUSB0", (str(tmp_path),)).startswith(f"pid {sleeper.pid} (python")
        assert uucp_lock_holder("/dev/ttyUSB1", (str(tmp_path),)) is None
    finally:
        sleeper.stdin.close()
        sleeper.wait(10)
    assert uucp_lock_holder("/dev/ttyUSB0", (str(tmp_path),)) is None  # stale: its process is gone


@given(st.binary(max_size=80))
def test_uucp_lock_file_contents_never_break_the_scan(tmp_path_factory, data: bytes) -> None:
    from fieldkit.link.serialport import uucp_lock_holder

    d = tmp_path_factory.mktemp("lock")
    (d / "LCK..ttyS9").write_bytes(data)
    holder = uucp_lock_holder("/dev/ttyS9", (str(d),))
    assert holder is None or holder.startswith("pid ")


def test_an_agent_that_cannot_lock_a_port_leaves_its_settings_alone() -> None:
    import termios

    from fieldkit.agent.streams import open_tty
    from fieldkit.link.serialport import SerialPort

    with bare_pty() as (_master, path):
        holder = SerialPort.open_port(path, 57600)
        try:
            with pytest.raises(OSError, match="in use"):
                open_tty(path, 115200)
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                assert termios.tcgetattr(fd)[5] == termios.B57600  # the holder's speed, not the loser's
            finally:
                os.close(fd)
        finally:
            holder.close()


def test_a_port_this_user_may_not_open_is_permission_denied_with_the_group(tmp_path) -> None:
    import shutil

    prefix: list[str] = []
    if os.geteuid() == 0:
        # root opens anything through CAP_DAC_OVERRIDE: run the scan without it (and without
        # CAP_DAC_READ_SEARCH), so the port's mode bits apply as to a technician not in its group
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and util-linux's setpriv is missing: cannot drop CAP_DAC_OVERRIDE")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    with bare_pty() as (master, path):
        dialout = grp.getgrnam("dialout").gr_gid
        if os.geteuid() == 0:
            os.chown(path, 0, dialout)
            os.chmod(path, 0o060)  # group dialout may read and write; the owner (root) may not
        else:
            os.chmod(path, 0o000)
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
        proc = subprocess.run([*prefix, sys.executable, "-m", "fieldkit", "devices", "scan", "--json", "--serial",
                               "--ports", path], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
        assert "Traceback" not in proc.stderr, proc.stderr
        doc = json.loads(proc.stdout)
        f = entry(doc, path)
        assert f["status"] == "permission_denied" and f["agent"] is False and f["bauds_tried"] == []
        assert f["group"] == group
        assert group in f["note"]
        if os.geteuid() == 0:
            assert f"usermod -aG {group}" in f["note"]  # the group may use it: join it
        assert not select.select([master], [], [], 0.1)[0]  # nothing was sent


def test_cli_json_shape_and_nothing_found_says_what_was_tried(tmp_path) -> None:
    with bare_pty() as (_m1, p1), bare_pty() as (_m2, p2):
        code, doc = scan_json("--serial", "--ports", p1, "--ports", p2)
        not_grabbed(entry(doc, p1), entry(doc, p2))
        assert code == 1  # nothing found
        assert set(doc) == {"serial", "network", "tried", "causes"}
        assert doc["network"] == [] and "network" not in doc["tried"]
        for path in (p1, p2):
            e = entry(doc, path)
            for key in ("device", "description", "status", "agent", "baud", "vid_pid", "manufacturer",
                        "serial_number", "agent_version", "hostname", "hardware", "suggested_profile"):
                assert key in e, key
        serial = doc["tried"]["serial"]
        assert serial["globs"] == {p1: [p1], p2: [p2]} and set(serial["ports"]) >= {p1, p2}
        assert serial["bauds"] == BAUDS
        assert any("agent" in c for c in doc["causes"])
        proc = run_cli("devices", "scan", "--serial", "--ports", p1)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert p1 in proc.stdout and "115200 921600 57600 9600" in proc.stdout
        assert "Nothing found. Likely causes:" in proc.stdout and "fieldkit-agent serve --serial" in proc.stdout


def test_four_ptys_complete_within_the_documented_bound(home, tmp_path) -> None:
    """The figure in fieldkit/scan.py: with the four usual bauds, serial_bound(4) = 8.4 s."""
    with serial_device(tmp_path, baud=115200, name="fast") as fast, \
            serial_device(tmp_path, baud=57600, bytes_per_second=5760, uart=True, name="slow") as slow, \
            bare_pty() as (_m1, p1), bare_pty() as (_m2, p2):
        started = time.monotonic()
        code, doc = scan_json("--serial", "--ports", fast.laptop_path, "--ports", slow.laptop_path,
                              "--ports", p1, "--ports", p2)
        wall = time.monotonic() - started
        not_grabbed(*doc["serial"])
        speed_kept(slow, 57600)
        assert code == 0
        assert (entry(doc, fast.laptop_path)["baud"], entry(doc, slow.laptop_path)["baud"]) == (115200, 57600)
        not_grabbed(entry(doc, p1), entry(doc, p2))
        assert entry(doc, p1)["status"] == entry(doc, p2)["status"] == "no_agent", doc
        tried = doc["tried"]["serial"]
        assert tried["bound_s"] == serial_bound(4) == pytest.approx(8.4)
        assert tried["seconds"] <= tried["bound_s"]
        print(f"\n4 ptys: scan {tried['seconds']:.2f} s (bound {tried['bound_s']} s), CLI wall {wall:.2f} s")


# ---- network ---------------------------------------------------------------------------------------
def _multicast_works() -> str | None:
    """None when multicast loops back on this machine, else why not (the reason to skip)."""
    if not multicast_interfaces():
        return "no network interface is up with multicast here"
    group = "239.255.77.77"
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        rx.bind(("", 0))
        port = rx.getsockname()[1]
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton("0.0.0.0"))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        tx.sendto(b"fieldkit", (group, port))
        rx.settimeout(2)
        return None if rx.recv(64) == b"fieldkit" else "multicast did not loop back"
    except OSError as exc:
        return f"multicast does not work here: {exc}"
    finally:
        rx.close()
        tx.close()


def test_mdns_finds_an_ssh_service_registered_by_the_test_with_inventory_and_known_hosts(home, tmp_path) -> None:
    why = _multicast_works()
    if why:
        pytest.skip(why)
    import base64
    import hashlib
    import hmac

    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    from fieldkit.inventory import add_device

    name = f"fk-scan-{os.getpid()}-{time.monotonic_ns() % 100000}"
    address, port = "192.0.2.55", 2222  # TEST-NET-1: never a real host
    add_device(home, "line3-cam", f"ssh://pi@{address}:{port}")
    salt = os.urandom(20)  # a hashed known_hosts entry, as ssh-keygen -H writes it
    hashed = hmac.new(salt, f"[{address}]:{port}".encode(), hashlib.sha1).digest()
    blob = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + bytes(32)).decode()
    Path(os.environ["FIELDKIT_USER_KNOWN_HOSTS"]).write_text(
        f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(hashed).decode()} ssh-ed25519 {blob}\n")
    zc = Zeroconf(ip_version=IPVersion.V4Only)
    info = ServiceInfo("_ssh._tcp.local.", f"{name}._ssh._tcp.local.", addresses=[socket.inet_aton(address)],
                       port=port, server=f"{name}.local.")
    zc.register_service(info)
    try:
        found, tried = scan_network(home, seconds=2.0)
    finally:
        zc.unregister_service(info)
        zc.close()
    assert "unavailable" not in tried and tried["interfaces"]
    mine = [f for f in found if f.name == name]
    assert len(mine) == 1, found
    f = mine[0]
    assert (f.service, f.addresses, f.port, f.host) == ("_ssh._tcp.local", [address], port, f"{name}.local")
    assert f.in_inventory == "line3-cam" and f.known_host is True
    assert f.target == f"ssh://{address}:{port}"


def test_mdns_without_a_multicast_interface_says_so(tmp_path) -> None:
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
    # a fresh network namespace has only lo, which is down and has no multicast
    proc = subprocess.run(["unshare", "-n", sys.executable, "-m", "fieldkit", "devices", "scan", "--network",
                           "--seconds", "1"], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "multicast unavailable: no network interface is up with multicast" in proc.stdout
    assert "mDNS could not run" in proc.stdout


def test_multicast_interfaces_reads_the_flags() -> None:
    flags = {"lo": 0x49, "eth0": 0x1003, "wlan0": 0x1002, "tun0": 0x91}
    assert multicast_interfaces(flags.get, list(flags)) == ["eth0"]  # up + multicast; not loopback, not down
    assert multicast_interfaces(lambda name: None, ["eth0"]) is None  # cannot tell
    assert multicast_interfaces(flags.get, []) == []


# ---- TUI -------------------------------------------------------------------------------------------
async def test_fleet_scan_lists_the_agent_and_adds_it_in_two_keys(home, tmp_path, monkeypatch) -> None:
    from textual.widgets import DataTable, Input

    from fieldkit.inventory import get_device
    from screens.app import build_app
    from screens.fleet import FleetScreen
    from screens.modals import AddDeviceModal
    from screens.scan import ScanScreen

    with serial_device(tmp_path, baud=115200) as relay:
        monkeypatch.setenv("FIELDKIT_SCAN_PORTS", relay.laptop_path)  # the TUI's way to name a pty
        app = build_app(home, fleet_refresh_s=60)
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), what="the fleet")
            await pilot.press("s")
            assert isinstance(app.screen, ScanScreen)
            scan = app.screen
            key = f"serial:{relay.laptop_path}"
            await wait_for(pilot, lambda: not scan.scanning and key in scan.rows, timeout=30, what="the scan")
            not_grabbed(scan.rows[key].as_json())
            assert scan.rows[key].status == "agent", scan.rows[key]
            table = scan.query_one("#found", DataTable)
            table.move_cursor(row=table.get_row_index(key))  # select
            await pilot.press("enter")  # 1: the add dialog, prefilled
            await wait_for(pilot, lambda: isinstance(app.screen, AddDeviceModal), what="the add dialog")
            modal = app.screen
            target = modal.query_one("#target", Input).value
            assert target == f"serial://{relay.laptop_path}?baud=115200"
            name = modal.query_one("#name", Input).value
            assert name
            await pilot.press("enter")  # 2: saved
            await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), what="back to the fleet")
            await wait_for(pilot, lambda: name in app.screen.rows, what="the new row")
    dev = get_device(home, name)
    assert dev is not None and dev.target == target
    assert dev.profile == scan.rows[key].suggested_profile
