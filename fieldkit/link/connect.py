"""Open a :class:`DeviceLink` to a device named by inventory name or target string."""

from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass
from typing import Any

from fieldkit.errors import ConnectError
from fieldkit.link.client import DeviceLink
from fieldkit.locations import Home


@dataclass(frozen=True)
class ResolvedDevice:
    name: str
    target: str
    profile: Any  # fieldkit.profiles.Profile


def resolve(spec: str, home: Home, profile: str | None = None) -> ResolvedDevice:
    """Inventory name first, then a target string (``ssh://``, ``serial://``, ``local:``, alias)."""
    from fieldkit.inventory import get_device
    from fieldkit.link.targets import parse_target
    from fieldkit.profiles import get_profile

    dev = get_device(home, spec)
    if dev is not None:
        return ResolvedDevice(dev.name, dev.target, get_profile(profile or dev.profile, home))
    target = parse_target(spec)
    return ResolvedDevice(str(target), str(target), get_profile(profile or "generic-linux", home))


_JOURNALS: dict[str, Any] = {}
_JOURNALS_LOCK = threading.Lock()


def journal_for(home: Home) -> Any:
    """The operator journal of ``home``, opened once per process and shared by all threads.

    This is the one seam through which every device operation is recorded; it refuses (exit 2,
    with the command to run) when no operator identity exists."""
    from fieldkit.journal import Journal

    key = str(home.root.resolve())
    with _JOURNALS_LOCK:
        j = _JOURNALS.get(key)
        if j is None:
            j = _JOURNALS[key] = Journal.open(home)
        return j


def connect(dev: ResolvedDevice | str, home: Home, *, timeout: float = 15.0,
            dead_after_s: float = 6.0, witness: bool = True) -> DeviceLink:
    """Connect, start the agent if needed, handshake; record it in the operator journal and
    exchange checkpoints with the device's journal. Raises ConnectError / HostKeyError, and
    IdentityMissing when there is no operator identity."""
    journal = journal_for(home)
    if isinstance(dev, str):
        dev = resolve(dev, home)
    with journal.operation(dev.name, "connect", {"target": dev.target, "profile": dev.profile.name}) as op:
        link = _open(dev, home, timeout, dead_after_s)
        op.details.update(transport=link.transport, agent_version=link.agent.get("agent_version"),
                          capabilities=link.agent.get("capabilities"))
    link.journal = journal  # type: ignore[attr-defined]
    if witness:
        try:
            journal.witness(link, dev.name, timeout=timeout)
        except BaseException:
            link.close("journal exchange failed")
            raise
    return link


def _open(dev: ResolvedDevice, home: Home, timeout: float, dead_after_s: float) -> DeviceLink:
    from fieldkit.link.targets import LocalTarget, SerialTarget, SshTarget, parse_target

    target = parse_target(dev.target)
    if isinstance(target, LocalTarget):
        from fieldkit.link.local import spawn_local_agent

        stream = spawn_local_agent(target.root, home.root / "cache")
        link = DeviceLink(stream, name=dev.name, transport="local", dead_after_s=dead_after_s)
        return _start(link, timeout, stream)
    if isinstance(target, SshTarget):
        return _connect_ssh(dev, target, home, timeout, dead_after_s)
    if isinstance(target, SerialTarget):
        return _connect_serial(dev, target, timeout, dead_after_s)
    raise ConnectError(f"{dev.name}: unsupported target {dev.target}")


def _start(link: DeviceLink, timeout: float, stream: Any) -> DeviceLink:
    try:
        return link.start(timeout=timeout)
    except ConnectError as exc:
        err = getattr(stream, "stderr_text", lambda: "")().strip()
        if err:
            exc.message += f"\n  the agent said: {err.splitlines()[-1]}"
        raise


def _connect_ssh(dev: ResolvedDevice, target: Any, home: Home, timeout: float,
                 dead_after_s: float) -> DeviceLink:
    from fieldkit.link.ssh import SshSession, push_agent
    from fieldkit.link.zipapp import agent_archive

    session = SshSession.open(target, home, connect_timeout=timeout)
    try:
        arch = agent_archive()
        pushed = push_agent(session, arch.data, arch.sha256,
                            python_candidates=tuple(dev.profile.transport.python))
        command = f"{shlex.quote(pushed.python)} {shlex.quote(pushed.path)} serve --stdio"
        stream = session.exec_stream(command)
    except BaseException:
        session.close()
        raise
    link = DeviceLink(stream, name=dev.name, transport="ssh", dead_after_s=dead_after_s,
                      on_close=session.close)
    link.agent_push = pushed  # type: ignore[attr-defined]
    return _start(link, timeout, stream)


class _SerialPort:
    """pyserial as a raw port (fieldkit.agent.streams interface)."""

    def __init__(self, path: str, baud: int) -> None:
        import serial

        try:
            self._port = serial.Serial(path, baud, timeout=0.05, write_timeout=10, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            raise ConnectError(f"cannot open serial port {path}: {exc}",
                               hint="check the cable and that no other program holds the port") from exc
        self._lock = threading.Lock()

    def read_some(self, n: int, timeout: float) -> bytes:
        import serial

        try:
            if self._port.timeout != timeout:
                self._port.timeout = timeout
            first = self._port.read(1)
            if not first:
                return b""
            waiting = self._port.in_waiting
            return first + (self._port.read(min(n - 1, waiting)) if waiting and n > 1 else b"")
        except serial.SerialException as exc:
            raise OSError(str(exc)) from exc

    def write(self, data: bytes) -> None:
        import serial

        try:
            self._port.write(data)
        except serial.SerialException as exc:
            raise OSError(str(exc)) from exc

    def close(self) -> None:
        try:
            self._port.close()
        except Exception:
            pass


class _SerialStream:
    """One ARQ session as the link's stream; closing it ends the session and frees the port."""

    def __init__(self, arq: Any, session: Any) -> None:
        self.arq = arq
        self.session = session

    def read(self, n: int) -> bytes:
        return self.session.read(n)

    def write(self, data: bytes) -> None:
        self.session.write(data)

    def close(self) -> None:
        self.arq.close(linger=0.2)


def _connect_serial(dev: ResolvedDevice, target: Any, timeout: float, dead_after_s: float) -> DeviceLink:
    from fieldkit.agent.arq import ArqLink

    port = _SerialPort(target.path, target.baud)
    arq = ArqLink(port, name=target.path, dead_after=dead_after_s)
    try:
        session = arq.connect(timeout=min(timeout, 10.0))
    except (TimeoutError, OSError) as exc:
        arq.close()
        raise ConnectError(f"{dev.name}: no fieldkit agent answered on {target.path} at {target.baud} baud",
                           hint="check the cable and baud rate, and that `fieldkit-agent serve --serial` "
                                "runs on the device") from exc
    link = DeviceLink(_SerialStream(arq, session), name=dev.name, transport="serial", dead_after_s=dead_after_s)
    link.arq = arq  # type: ignore[attr-defined]
    return _start(link, timeout, None)


def trust_device(home: Home, spec: str, *, fingerprint: str | None = None,
                 confirm: Any = None, replace: bool = False) -> Any:
    """Check and pin a device's SSH host key (``fieldkit trust``, the TUI's trust dialog), and
    record the decision in the operator journal: pinned, replaced, declined or refused."""
    from fieldkit.errors import Cancelled, HostKeyError
    from fieldkit.link.hostkeys import trust
    from fieldkit.link.targets import parse_target

    journal = journal_for(home)
    dev = resolve(spec, home)
    details: dict[str, Any] = {"target": dev.target, "fingerprint_given": fingerprint, "replace": replace}
    try:
        result = trust(home, parse_target(dev.target), fingerprint=fingerprint, confirm=confirm, replace=replace)
    except Cancelled:
        journal.record(dev.name, "trust.decline", "refused", details)
        raise
    except HostKeyError as exc:
        journal.record(dev.name, "trust.refuse", "refused",
                       {**details, "presented": exc.fingerprint, "expected": exc.expected, "error": exc.message})
        raise
    doc = result.as_dict()
    journal.record(dev.name, f"trust.{doc['status']}", "ok",
                   {**details, "key_type": doc["key_type"], "fingerprint": doc["fingerprint"]})
    return result


def record_decline(home: Home, device: str, fingerprint: str) -> None:
    """The technician declined an unknown host key in a dialog: nothing is saved, but it is recorded."""
    journal_for(home).record(device, "trust.decline", "refused", {"presented": fingerprint})
