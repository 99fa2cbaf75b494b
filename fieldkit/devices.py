"""The device session: one open device, with its link, journal and profile as declared attributes.

Every service that touches a device (health, bench, and next install, versions, checklists) takes a
:class:`DeviceSession` from here::

    with open_session("line3-cam", home) as dev:        # resolve, connect, journal, witness
        raw = dev.call("health", {...})                  # a typed, validated result (fieldkit.wire)
        dev.record("health.check", "ok", {...})          # the operator journal, through the session

Opening a session resolves an inventory name (or a target string) with its profile, opens the
transport (:mod:`fieldkit.link`), records the connect in the operator journal, over a serial line
authenticates the operator to the device (:func:`authenticate_serial`) and compares the agent's
version with this fieldkit's, and exchanges checkpoints with the device's own journal (the witness). Whatever the device answers is parsed
into a typed model at :meth:`DeviceSession.call`: a device can be broken or hostile, and a wrong
type is a :class:`~fieldkit.errors.DeviceError` (exit 4) naming the operation and the field.

Host keys: :func:`trust_device` pins one, :func:`check_host_key` tells whether a connect would
accept it — the same check a connect makes, so the TUI's ``t`` and a connect never disagree.
"""

from __future__ import annotations

import hashlib
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from fieldkit import wire
from fieldkit.errors import Cancelled, ConfigError, DeviceError, HostKeyError
from fieldkit.inventory import get_device, load_inventory
from fieldkit.journal import Journal, OperationRecord, WitnessReport
from fieldkit.link.client import DeviceLink
from fieldkit.link.connect import open_link
from fieldkit.link.sshconfig import names_a_host
from fieldkit.link.targets import SshTarget, parse_target
from fieldkit.locations import Home
from fieldkit.profiles import DEFAULT_PROFILE, Profile, get_profile


@dataclass(frozen=True)
class SerialAuth:
    """How the operator authentication of a serial session went (``DeviceSession.auth``).

    ``ok`` False does not fail the connect: reading stays possible, and an operation that changes
    the device is then refused by the device itself (``not_authenticated``, exit 4, with why)."""

    ok: bool
    fingerprint: str | None = None
    code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ResolvedDevice:
    """A device as fieldkit knows it: its name, how to reach it, what profile judges it."""

    name: str
    target: str
    profile: Profile


def resolve(spec: str, home: Home, profile: str | None = None) -> ResolvedDevice:
    """Inventory name first, then a target string (``ssh://``, ``serial://``, ``local:``, alias).

    A bare word that is neither an inventory name nor a host the SSH config or /etc/hosts knows
    (:func:`fieldkit.link.sshconfig.names_a_host`) is refused as a device name not in the inventory,
    with the names close to it, before any DNS lookup; ``ssh://WORD`` reaches such a host anyway.
    ``profile`` overrides the inventory's profile (``--profile``). ConfigError for a bad target, an
    unknown name or an unknown profile."""
    dev = get_device(home, spec)
    if dev is not None:
        return ResolvedDevice(dev.name, dev.target, get_profile(profile or dev.profile, home))
    if not names_a_host(spec):
        raise not_in_inventory(spec, home)
    target = parse_target(spec)
    return ResolvedDevice(str(target), str(target), get_profile(profile or DEFAULT_PROFILE, home))


def not_in_inventory(name: str, home: Home) -> ConfigError:
    """``name`` is no device of the inventory: say so first, with the names close to it."""
    from difflib import get_close_matches

    names = [d.name for d in load_inventory(home)]
    if not names:
        return ConfigError(f'"{name}" is not in the inventory: the inventory is empty',
                           hint="add the device with `fieldkit devices add NAME TARGET` "
                                "(or try simulated ones with `fieldkit demo`)")
    near = get_close_matches(name, names, n=3, cutoff=0.6)
    also = f"; did you mean {' or '.join(near)}?" if near else f" (which has {_listed(names)})"
    return ConfigError(f'"{name}" is not in the inventory{also}',
                       hint=f"`fieldkit devices list` shows the inventory; to reach a host named {name} "
                            f"anyway, write ssh://{name}")


def _listed(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class DeviceSession:
    """An open device. Thread-safe like its link: several calls may run at once.

    Attributes: ``device`` (name, target, profile), ``link`` (the message client), ``journal``
    (the operator journal every operation is recorded in), ``home``, ``witness`` (what the
    checkpoint exchange on connect found, or None when it was skipped)."""

    def __init__(self, device: ResolvedDevice, link: DeviceLink, journal: Journal, home: Home, *,
                 owns_journal: bool = False) -> None:
        self.device = device
        self.link = link
        self.journal = journal
        self.home = home
        self.witness: WitnessReport | None = None
        self.auth: SerialAuth | None = None
        """Serial links: the operator authentication on connect (None: not attempted)."""
        self.warnings: list[str] = []
        """What the technician should know that is not an error (an outdated serial agent)."""
        self.hello = wire.parse_hello(link.agent, device=device.name)
        self._owns_journal = owns_journal
        self._lock = threading.Lock()
        self._running = 0  # journaled operations in flight: they still record after close()
        self._closing = False
        self._identity: wire.IdentityResult | None = None
        self._identity_lock = threading.Lock()

    # ---- what the services use -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.device.name

    @property
    def target(self) -> str:
        return self.device.target

    @property
    def profile(self) -> Profile:
        return self.device.profile

    @property
    def transport(self) -> str:
        return self.link.transport

    @property
    def agent(self) -> dict:
        """The agent's handshake as a plain dict (version, capabilities, operations)."""
        return self.hello.model_dump()

    def supports(self, op: str) -> bool:
        return op in self.hello.ops

    def identity(self, *, timeout: float | None = 15.0) -> wire.IdentityResult | None:
        """What hardware the device is (the agent's ``identity``), asked once per session and kept;
        None from an agent older than the operation. A refusal or an unusable answer is a
        DeviceError like any other call's (and is asked again next time)."""
        with self._identity_lock:
            if self._identity is None and self.supports("identity"):
                self._identity = self.call("identity", timeout=timeout)
            return self._identity

    def call(self, op: str, args: dict | None = None, *, timeout: float | None = 60.0,
             on_event: Callable[[Any], None] | None = None, cancel: threading.Event | None = None,
             body: bytes = b"") -> Any:
        """Run ``op`` on the device; its result parsed into the operation's typed model.

        ``on_event`` receives each progress event already parsed. DeviceError (exit 4) for a
        refusal or a result of the wrong shape; LinkLost / Cancelled as the link raises them."""
        def relay(data: dict) -> None:
            try:
                event = wire.parse_event(op, data, device=self.name)
            except DeviceError:
                return  # a malformed progress event is dropped; the result still has to parse
            if on_event is not None:
                on_event(event)

        doc = self.link.call(op, args, body=body, timeout=timeout, on_event=relay if on_event else None,
                             cancel=cancel)
        return wire.parse_result(op, doc, device=self.name)

    def upload(self, source: Path, dest: str, **kw: Any) -> Any:
        """Stream a local file to ``dest`` on the device (resumable; see DeviceLink.upload)."""
        return wire.parse_result("put", self.link.upload(source, dest, **kw), device=self.name)

    def record(self, action: str, outcome: str, details: dict | None = None) -> Any:
        return self.journal.record(self.name, action, outcome, details)

    @contextmanager
    def operation(self, action: str, details: dict | None = None) -> Iterator[Any]:
        """Journal one operation on this device (see Journal.operation). Closing the session while
        it runs (Esc in the TUI, a pulled cable) still lets it record how it ended."""
        with self._lock:
            self._running += 1
        try:
            with self.journal.operation(self.name, action, details) as op:
                yield op
        finally:
            with self._lock:
                self._running -= 1
                last = self._closing and self._running == 0
            if last and self._owns_journal:
                self.journal.close()

    # ---- lifecycle --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.link.closed

    @property
    def idle(self) -> bool:
        """Nothing runs over this session now: no journaled operation, no call waiting for its answer
        (a long-lived session may then be handed over, e.g. a serial port another command asks for)."""
        with self._lock:
            running = self._running
        return running == 0 and self.link.in_flight == 0

    def close(self, reason: str = "closed by fieldkit") -> None:
        self.link.close(reason)
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._running == 0
        if idle and self._owns_journal:
            self.journal.close()

    def __enter__(self) -> "DeviceSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_session(dev: ResolvedDevice | str, home: Home, *, journal: Journal | None = None,
                 profile: str | None = None, timeout: float = 15.0, dead_after_s: float = 6.0,
                 witness: bool = True, record_failure: bool = True) -> DeviceSession:
    """Resolve, connect, record the connect, and witness the device's journal.

    ``journal``: the operator journal to record in (callers working on many devices share one);
    without it the session opens its own and closes it with itself. ``record_failure=False`` records
    only a connect that succeeds: a watcher retrying a device that is down (fieldkit.fleetwatch)
    journals the outage once, not every attempt. Raises ConnectError /
    HostKeyError (exit 3), DeviceError (exit 4) for an agent that answers nonsense, and
    IdentityMissing (exit 2) when there is no operator identity — before touching the device."""
    owns = journal is None
    if journal is None:
        journal = Journal.open(home)
    try:
        if isinstance(dev, str):
            dev = resolve(dev, home, profile)
        with _connect_record(journal, dev.name, {"target": dev.target, "profile": dev.profile.name},
                             record_failure) as op:
            link = open_link(dev.target, name=dev.name, home=home, timeout=timeout, dead_after_s=dead_after_s,
                             python_candidates=dev.profile.transport.python, become=dev.profile.transport.become)
            try:
                session = DeviceSession(dev, link, journal, home, owns_journal=owns)
            except BaseException:
                link.close("the agent's handshake was not usable")
                raise
            op.details.update(transport=link.transport, agent_version=session.hello.agent_version,
                              capabilities=session.hello.capabilities)
    except BaseException:
        if owns:
            journal.close()
        raise
    if link.transport == "serial":
        try:
            check_agent_version(session)
            if session.supports("auth_challenge"):
                session.auth = authenticate_serial(session)
        except BaseException:
            session.close("authentication failed")
            raise
    if witness:
        try:
            session.witness = journal.witness(session, dev.name, timeout=timeout)
        except BaseException:
            session.close("journal exchange failed")
            raise
    return session


@contextmanager
def _connect_record(journal: Journal, device: str, details: dict, record_failure: bool) -> Iterator[Any]:
    """``journal.operation`` for the connect; without ``record_failure`` a failure is not recorded."""
    if record_failure:
        with journal.operation(device, "connect", details) as op:
            yield op
        return
    op = OperationRecord(dict(details))
    yield op
    journal.record(device, "connect", op.outcome, op.details)


# ---- serial: the agent's version, the operator's authentication ----------------------------------------
def _version_key(text: str | None) -> tuple[int, ...] | None:
    m = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g or 0) for g in m.groups()) if m else None


def check_agent_version(session: DeviceSession) -> str | None:
    """A serial agent is installed on the device, not pushed like over SSH: warn (journal + the
    CLI's stderr) when it is older than the agent this fieldkit carries. Returns the warning."""
    from fieldkit import notices
    from fieldkit.agent import AGENT_VERSION

    theirs, mine = session.hello.agent_version, AGENT_VERSION
    have, want = _version_key(theirs), _version_key(mine)
    if have is None or want is None or have >= want:
        return None
    text = (f"{session.name}: its serial agent is version {theirs}, older than this fieldkit's agent {mine}; "
            f"replace it: `fieldkit agent upgrade {session.name}`")
    session.warnings.append(text)
    session.record("agent.outdated", "info", {"agent_version": theirs, "laptop_agent_version": mine,
                                              "transport": session.transport})
    notices.warn(text)
    return text


def authenticate_serial(session: DeviceSession, identity: Any = None, *, timeout: float = 30.0) -> SerialAuth:
    """Sign the agent's challenge with the operator's key (``fieldkit init``) so the device lets
    this serial session change it. What is signed is the canonical JSON of
    ``{"purpose": "fieldkit-operator-auth/1", "nonce", "session", "pid", "hostname", "root",
    "operator": <this key's fingerprint>}`` (fieldkit/agent/operators.py).

    A refusal (no operator key on the device, not this one, ...) is returned, not raised, and
    journaled as ``auth.serial`` refused; LinkLost still raises."""
    from fieldkit.agent.operators import signed_document
    from fieldkit.journal.identity import load_identity
    from fieldkit.signing import canonical

    ident = identity or session.journal.identity or load_identity(session.home)
    try:
        challenge = session.call("auth_challenge", timeout=timeout)
        doc = signed_document(challenge.model_dump(), ident.fingerprint)
        sig = ident.sign(hashlib.sha256(canonical(doc)).digest())
        res = session.call("auth_response", {"nonce": challenge.nonce, "signature": sig,
                                             "public_key": ident.public_key_pem}, timeout=timeout)
    except DeviceError as exc:
        reason = re.sub(r"^.*?: auth_[a-z]+ failed: ", "", exc.message, count=1)
        result = SerialAuth(False, ident.fingerprint, exc.code, reason)
        session.record("auth.serial", "refused", {"fingerprint": ident.fingerprint, "code": exc.code,
                                                  "reason": reason})
        return result
    session.record("auth.serial", "ok", {"fingerprint": res.fingerprint, "file": res.file,
                                         "session": res.session})
    return SerialAuth(True, res.fingerprint)


# ---- host keys ---------------------------------------------------------------------------------------
def trust_device(home: Home, spec: str, *, fingerprint: str | None = None,
                 confirm: Callable[[str, str, str], bool] | None = None, replace: bool = False) -> Any:
    """Check and pin a device's SSH host key (``fieldkit trust``, the TUI's trust dialog), and
    record the decision in the operator journal: pinned, replaced, declined or refused."""
    from fieldkit.link.trust import trust

    with Journal.open(home) as journal:
        dev = resolve(spec, home)
        details: dict[str, Any] = {"target": dev.target, "fingerprint_given": fingerprint, "replace": replace}
        try:
            result = trust(home, parse_target(dev.target), fingerprint=fingerprint, confirm=confirm,
                           replace=replace)
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
    with Journal.open(home) as journal:
        journal.record(device, "trust.decline", "refused", {"presented": fingerprint})


def check_host_key(home: Home, spec: str, *, connect_timeout: float = 10.0) -> tuple[str, str] | None:
    """Would a connect accept this device's host key? ``(key_type, fingerprint)`` when trusted,
    None for a device that is not reached over SSH; HostKeyError (unknown, changed, revoked) or
    ConnectError otherwise. The same check a connect makes; nothing is written."""
    from fieldkit.link.trust import check_host_key as check

    dev = resolve(spec, home)
    target = parse_target(dev.target)
    if not isinstance(target, SshTarget):
        return None
    return check(home, target, connect_timeout=connect_timeout)


def require_identity(home: Home) -> None:
    """Refuse (IdentityMissing, exit 2, with the command to run) before any device is touched."""
    Journal.open(home).close()

