"""Open a :class:`DeviceLink` over the transport a target string names (transports only).

``open_link("ssh://pi@10.0.0.7", name="line3-cam", home=home)`` connects, starts the agent
(pushing it over SSH when needed), performs the handshake and returns the link. Resolving
inventory names and profiles, journaling and witnessing belong to the device session
(:mod:`fieldkit.devices`), which calls this.
"""

from __future__ import annotations

import shlex
from typing import Any, Callable, Sequence

from fieldkit.errors import ConnectError
from fieldkit.link.client import DeviceLink
from fieldkit.link.targets import LocalTarget, SerialTarget, SshTarget, parse_target
from fieldkit.locations import Home

def open_link(target: str, *, name: str, home: Home, timeout: float = 15.0, dead_after_s: float = 6.0,
              python_candidates: Sequence[str] = (), become: str | None = None) -> DeviceLink:
    """Connect to ``target`` and hand back a started link (ConnectError / HostKeyError otherwise).

    ``python_candidates`` are the interpreters tried on an SSH device, in order (the profile's;
    empty: the usual places); ``become="sudo"`` starts it there with ``sudo -n``."""
    parsed = parse_target(target)
    if isinstance(parsed, LocalTarget):
        from fieldkit.link.local import spawn_local_agent

        stream = spawn_local_agent(parsed.root, home.root / "cache")
        link = DeviceLink(stream, name=name, transport="local", dead_after_s=dead_after_s)
        return _start(link, timeout, stream)
    if isinstance(parsed, SshTarget):
        return _connect_ssh(name, parsed, home, timeout, dead_after_s, tuple(python_candidates), become)
    if isinstance(parsed, SerialTarget):
        return _connect_serial(name, parsed, home, timeout, dead_after_s)
    raise ConnectError(f"{name}: unsupported target {target}")


def _start(link: DeviceLink, timeout: float, stream: Any) -> DeviceLink:
    try:
        return link.start(timeout=timeout)
    except ConnectError as exc:
        err = getattr(stream, "stderr_text", lambda: "")().strip()
        if err:
            exc.message += f"\n  the agent said: {err.splitlines()[-1]}"
        raise


def _connect_ssh(name: str, target: SshTarget, home: Home, timeout: float, dead_after_s: float,
                 python_candidates: tuple[str, ...], become: str | None) -> DeviceLink:
    from fieldkit.link.ssh import SshSession
    from fieldkit.link.sshpush import push_agent
    from fieldkit.link.zipapp import agent_archive

    session = SshSession.open(target, home, connect_timeout=timeout)
    try:
        arch = agent_archive()
        pushed = push_agent(session, arch.data, arch.sha256,
                            python_candidates=python_candidates)
        command = f"{shlex.quote(pushed.python)} {shlex.quote(pushed.path)} serve --stdio"
        if become == "sudo":  # non-interactive: a password prompt would hang the link
            command = f"sudo -n {command}"
        stream = session.exec_stream(command)
    except BaseException:
        session.close()
        raise
    link = DeviceLink(stream, name=name, transport="ssh", dead_after_s=dead_after_s,
                      on_close=session.close, agent_push=pushed)
    return _start(link, timeout, stream)


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


def _connect_serial(name: str, target: SerialTarget, home: Home, timeout: float, dead_after_s: float) -> DeviceLink:
    from fieldkit.link import portlock
    from fieldkit.link.serialport import PortUnavailable, SerialPort

    try:
        port = SerialPort.open_port(target.path, target.baud)
    except PortUnavailable as exc:
        if exc.status == "busy":  # another fieldkit: say who, since when, and how to get the port back
            raise portlock.busy_error(home, target.path, name, exc) from exc
        raise
    portlock.claim(home, target.path, name)  # the holder record beside the port's lock
    try:
        return serial_handshake(port, name=name, session_timeout=min(timeout, 10.0), timeout=timeout,
                                dead_after_s=dead_after_s, on_close=lambda: portlock.unclaim(home, target.path))
    except BaseException:
        portlock.unclaim(home, target.path)
        raise


def serial_handshake(port: Any, *, name: str, session_timeout: float, timeout: float, dead_after_s: float = 6.0,
                     close_port: bool = True, on_close: Callable[[], None] | None = None) -> DeviceLink:
    """The serial handshake on an open :class:`~fieldkit.link.serialport.SerialPort` at its current
    baud: ARQ session requests (RESET) for up to ``session_timeout`` s, then the agent's hello.

    ConnectError when nothing answered; then nothing but those requests was sent, and the port is
    closed unless ``close_port`` is False (``fieldkit devices scan`` tries the next baud on it)."""
    from fieldkit.agent.arq import ArqLink
    from fieldkit.link.serialport import NoAgentAnswer

    arq = ArqLink(port, name=port.path, dead_after=dead_after_s, close_port=close_port)
    try:
        session = arq.connect(timeout=session_timeout)
    except (TimeoutError, OSError) as exc:
        arq.abort()
        raise NoAgentAnswer(f"{name}: no fieldkit agent answered on {port.path} at {port.baud} baud",
                           hint="check the cable and baud rate, and that `fieldkit-agent serve --serial` "
                                "runs on the device") from exc
    link = DeviceLink(_SerialStream(arq, session), name=name, transport="serial", dead_after_s=dead_after_s,
                      arq=arq, on_close=on_close)
    return _start(link, timeout, None)
