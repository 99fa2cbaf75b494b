"""Watch devices over long-lived sessions: one device session each, journaled by what matters.

The fleet screen and ``fieldkit health --watch`` used to reconnect every device on every poll, and
every poll left a ``connect``, a ``journal.witness`` and a ``health.check`` in the operator journal
(about 1,000 entries per device-hour at a 10 s poll): the audit became noise. A :class:`FleetWatch`
keeps one :class:`~fieldkit.devices.DeviceSession` per device open (the link's heartbeats keep it
alive and notice a dead peer within seconds), polls health over it, reconnects a lost device with
exponential backoff and jitter, and journals only:

* ``connect`` and ``journal.witness`` once per session (as every connect does);
* ``health.check`` when a device's health *status* changes, with the status it left and the
  problems that explain the new one (the first sample of a device counts as a change). A worse
  status is journaled at once; a better one once it has held ``settle_polls`` polls in a row, so a
  reading that flaps at a threshold is one entry, not one per flap (alarm hysteresis);
* ``disconnect`` (failed) once when a session dies, with why; a device that cannot be reached is
  one failed ``connect`` — the attempts while it stays down are counted, not journaled one by one,
  and ``reconnect`` (info) says, once it is back, how long it was gone and after how many attempts;
* ``session.release`` when the technician had a serial session handed over to another command.

Serial ports take one session at a time: while a watch holds one, another fieldkit command is told
who holds it (:mod:`fieldkit.link.portlock`) and ``fieldkit devices release DEVICE`` asks the watch to
let go; it does when nothing runs over the session and no screen holds it (:meth:`FleetWatch.hold`),
and stays away for ``release_hold_s`` unless asked to poll again (:meth:`FleetWatch.poll_now`).

Nothing here knows about Textual: reports go to ``on_report`` (called from worker threads).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fieldkit.errors import Cancelled, ConnectError, FieldkitError, LinkLost
from fieldkit.checks import severity
from fieldkit.health import HealthReport, check_session, failed_report, record_health
from fieldkit.locations import Home

log = logging.getLogger(__name__)

ReportFn = Callable[[HealthReport], None]


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt ``n`` (1, 2, …): ``first_s × factor^(n-1)``, at most ``max_s``,
    spread by ±``jitter`` so that many devices lost together (a switch rebooted) do not all come back
    in the same instant."""

    first_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.first_s * self.factor ** max(0, attempt - 1))
        return max(0.0, base * (1.0 + rng.uniform(-self.jitter, self.jitter)))


class _Device:
    """What the watch knows about one device (fields change under ``lock`` or in the scheduler)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()  # one poll or connect at a time
        self.session: Any = None
        self.connected_at = 0.0
        self.port: str | None = None  # serial sessions: the laptop's port
        self.status: str | None = None  # the last health status journaled
        self.better = 0  # polls in a row at a better status than the journaled one
        self.report: HealthReport | None = None
        self.failures = 0  # failed connect attempts in this outage
        self.down_since: float | None = None  # wall time the outage began
        self.down_reason = ""
        self.outage_journaled = False
        self.retry_at = 0.0
        self.due = 0.0
        self.polling = False
        self.holds = 0
        self.released_until = 0.0
        self.released_note = ""
        self.connects = 0
        self.polls = 0


class FleetWatch:
    """Long-lived sessions to a set of devices (inventory names or targets). Thread-safe.

    Drive it either way: :meth:`start` polls every device every ``interval`` seconds in the
    background (the TUI's fleet), or :meth:`poll_round` polls all of them now and returns the
    reports in order (``fieldkit health --watch``); :meth:`start` with ``autopoll=False`` then only
    watches for dead links and release requests."""

    def __init__(self, home: Home, *, interval: float = 10.0, timeout: float = 10.0, dead_after_s: float = 6.0,
                 sample_s: float = 0.25, profile: str | None = None, backoff: Backoff | None = None,
                 max_workers: int = 8, on_report: ReportFn | None = None, release_hold_s: float = 300.0,
                 settle_polls: int = 3,
                 rng: random.Random | None = None, journal: Any = None) -> None:
        self.home = home
        self.interval = interval
        self.timeout = timeout
        self.dead_after_s = dead_after_s
        self.sample_s = sample_s
        self.profile = profile
        self.backoff = backoff or Backoff()
        self.release_hold_s = release_hold_s
        self.settle_polls = max(1, settle_polls)
        self.on_report = on_report
        self._rng = rng or random.Random()
        self._journal = journal
        self._owns_journal = journal is None
        self._journal_lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._order: list[str] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fleetwatch")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._autopoll = False

    # ---- set-up ------------------------------------------------------------------------------------
    @property
    def journal(self) -> Any:
        """The operator journal, opened on first use (in a worker: the TUI paints before it opens).
        IdentityMissing (exit 2) while there is no operator; asked again on the next use."""
        with self._journal_lock:
            if self._journal is None:
                from fieldkit.journal import Journal

                self._journal = Journal.open(self.home)
            return self._journal

    def track(self, names: Iterable[str]) -> None:
        """Watch exactly these devices (in this order); sessions of devices no longer named close."""
        names = list(dict.fromkeys(names))
        with self._lock:
            gone = [self._devices.pop(n) for n in list(self._devices) if n not in names]
            for n in names:
                self._devices.setdefault(n, _Device(n))
            self._order = names
        for dev in gone:
            if dev.session is not None:
                threading.Thread(target=dev.session.close, args=("removed from the watch",), daemon=True).start()
        self._wake.set()

    def _device(self, name: str) -> _Device:
        with self._lock:
            dev = self._devices.get(name)
            if dev is None:  # asked for directly (a device screen): watched from now on
                dev = self._devices[name] = _Device(name)
                self._order.append(name)
            return dev

    def start(self, *, autopoll: bool = True) -> "FleetWatch":
        self._autopoll = autopoll
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleetwatch", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> "FleetWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop polling and close every session (in parallel, waiting at most ``timeout`` s)."""
        self._stop.set()
        self._wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            sessions = [d.session for d in self._devices.values() if d.session is not None]
            for d in self._devices.values():
                d.session = None
        closers = [threading.Thread(target=s.close, args=("fieldkit stopped watching",), daemon=True)
                   for s in sessions]
        for t in closers:
            t.start()
        deadline = time.monotonic() + timeout
        for t in closers:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            devices = list(self._devices.values())
        for d in devices:  # polls still running end quickly now that their links are closed
            if d.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                d.lock.release()
        with self._journal_lock:
            if self._journal is not None and self._owns_journal:
                self._journal.close()
                self._journal = None

    # ---- what callers use ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return list(self._order)

    def session(self, name: str) -> Any:
        """The open session to ``name`` (to run more over it: models, a checklist), or None."""
        with self._lock:
            dev = self._devices.get(name)
        s = dev.session if dev is not None else None
        return s if s is not None and not s.closed else None

    def last_report(self, name: str) -> HealthReport | None:
        with self._lock:
            dev = self._devices.get(name)
        return dev.report if dev is not None else None

    def connects(self, name: str) -> int:
        """Sessions opened to ``name`` so far (what the journal's ``connect`` entries count)."""
        with self._lock:
            dev = self._devices.get(name)
        return dev.connects if dev is not None else 0

    def hold(self, name: str) -> None:
        """Someone polls ``name`` themselves through :meth:`poll` (a device screen): the background
        poll leaves it alone and a release request is answered busy until :meth:`unhold`."""
        dev = self._device(name)
        with self._lock:
            dev.holds += 1

    def unhold(self, name: str) -> None:
        dev = self._device(name)
        with self._lock:
            dev.holds = max(0, dev.holds - 1)
            dev.due = min(dev.due, time.monotonic() + self.interval)
        self._wake.set()

    def poll_now(self, names: Iterable[str] | None = None) -> None:
        """The technician asked (``r``, a host key just trusted): poll now, reconnect now, forget the
        backoff, and take back a serial port released on request."""
        targets = list(names) if names is not None else self.names()
        for n in targets:
            dev = self._device(n)
            dev.due = dev.retry_at = dev.released_until = 0.0
        self._wake.set()

    def poll_round(self, names: Iterable[str] | None = None) -> list[HealthReport]:
        """Poll these devices (all watched ones by default) now, concurrently; reports in order.
        A device waiting out its reconnect backoff is not tried again: its last report comes back."""
        targets = list(names) if names is not None else self.names()
        for n in targets:
            self._device(n)
        return list(self._pool.map(self.poll, targets))

    def poll(self, name: str, *, force: bool = False, cancel: threading.Event | None = None) -> HealthReport:
        """Poll one device now over its session (connecting when it has none and its backoff allows,
        or always with ``force``), journal what changed, hand the report to ``on_report`` and
        return it. Never raises for device problems: they are the report's ``error``."""
        dev = self._device(name)
        with dev.lock:
            try:
                report = self._poll_locked(dev, force, cancel)
            except Exception as exc:  # a fault of fieldkit's: this device says so, the others go on
                log.debug("polling %s failed", name, exc_info=True)
                report = failed_report(name, self.home, self.profile, exc, 4)
            dev.report = report
            dev.polls += 1
            dev.due = time.monotonic() + self._next_in(dev)
        self._emit(report)
        return report

    # ---- one poll --------------------------------------------------------------------------------
    def _next_in(self, dev: _Device) -> float:
        now = time.monotonic()
        if dev.released_until > now:
            return dev.released_until - now
        if dev.session is None:
            return max(0.05, dev.retry_at - now)
        return self.interval

    def _poll_locked(self, dev: _Device, force: bool, cancel: threading.Event | None) -> HealthReport:
        from fieldkit.devices import resolve

        if self._stop.is_set():
            raise Cancelled("fieldkit stopped watching")
        now = time.monotonic()
        if force:
            dev.released_until = 0.0
        if dev.released_until > now:
            return self._released_report(dev)
        try:  # every poll: a profile or target edited while the session stays open takes effect
            resolved = resolve(dev.name, self.home, self.profile)
        except FieldkitError as exc:
            return failed_report(dev.name, self.home, self.profile, exc, exc.exit_code)
        session = dev.session
        if session is not None and session.target != resolved.target and not session.closed:
            dev.session = None
            session.close("the device's target changed in the inventory")
            session = None
        elif session is not None and session.closed:
            self._lost(dev, session)
            session = None
        if session is None:
            if now < dev.retry_at and not force and dev.report is not None:
                return dev.report
            try:
                session = self._connect(dev, resolved)
            except FieldkitError as exc:
                return self._connect_failed(dev, exc)
        try:
            report = check_session(session, profile=resolved.profile, sample_s=self.sample_s, timeout=self.timeout,
                                   cancel=cancel, record="never")
        except Cancelled:
            return dev.report or failed_report(dev.name, self.home, self.profile, LinkLost("cancelled"), 3)
        except ConnectError as exc:  # LinkLost: the session died during the poll
            session.close(exc.message)  # (already closed: keeps the link's own reason)
            self._lost(dev, session)
            return self._lost_report(dev, exc)
        except FieldkitError as exc:  # the device refused or answered nonsense: a health problem
            report = failed_report(dev.name, self.home, self.profile, exc, exc.exit_code)
            if report.status != dev.status:
                session.record("health.check", "failed", {"status": report.status, "previous": dev.status or "none",
                                                          "error": exc.message[:500]})
            dev.status, dev.better = report.status, 0
            return report
        self._journal_change(dev, session, report)
        return report

    def _journal_change(self, dev: _Device, session: Any, report: HealthReport) -> None:
        """Journal ``report`` if its status is news: worse than the last journaled one at once, better
        once it has held ``settle_polls`` polls in a row."""
        if report.status == dev.status:
            dev.better = 0
            return
        if dev.status is not None and severity(report.status) < severity(dev.status):
            dev.better += 1
            if dev.better < self.settle_polls:
                return
        record_health(session, report, previous=dev.status or "none")
        dev.status, dev.better = report.status, 0

    def _connect(self, dev: _Device, resolved: Any) -> Any:
        from fieldkit.devices import open_session
        from fieldkit.link.targets import SerialTarget, parse_target

        session = open_session(resolved, self.home, journal=self.journal, timeout=self.timeout,
                               dead_after_s=self.dead_after_s, record_failure=not dev.outage_journaled)
        if self._stop.is_set():  # closed while connecting: nobody would close this one
            session.close("fieldkit stopped watching")
            raise Cancelled("fieldkit stopped watching")
        if dev.down_since is not None:  # back after an outage: one entry for all of it
            self.journal.record(dev.name, "reconnect", "info", {
                "down_for_s": round(time.time() - dev.down_since, 1), "failed_attempts": dev.failures,
                "last_error": dev.down_reason[:300]})
        target = parse_target(resolved.target)
        dev.port = target.path if isinstance(target, SerialTarget) else None
        dev.session, dev.connected_at = session, time.monotonic()
        dev.connects += 1
        dev.failures, dev.down_since, dev.down_reason, dev.outage_journaled, dev.retry_at = 0, None, "", False, 0.0
        return session

    def _connect_failed(self, dev: _Device, exc: FieldkitError) -> HealthReport:
        dev.failures += 1
        if dev.down_since is None:
            dev.down_since = time.time()
        dev.down_reason = exc.message.splitlines()[0] if exc.message else type(exc).__name__
        dev.outage_journaled = True  # open_session recorded the first failure; the rest are counted
        delay = self.backoff.delay(dev.failures, self._rng)
        dev.retry_at = time.monotonic() + delay
        return failed_report(dev.name, self.home, self.profile, exc, exc.exit_code)

    def _lost(self, dev: _Device, session: Any, reason: str | None = None) -> None:
        """A session died (heartbeats stopped, the cable was pulled): one ``disconnect`` entry."""
        reason = reason or session.link.close_reason or "the link closed"
        if dev.session is session:
            dev.session = None
        if self._stop.is_set():
            return  # closed by close(): not an outage
        dev.down_since, dev.down_reason, dev.failures, dev.outage_journaled = time.time(), reason, 0, True
        dev.retry_at = time.monotonic() + self.backoff.delay(1, self._rng)
        try:
            self.journal.record(dev.name, "disconnect", "failed", {
                "reason": reason[:300], "connected_s": round(time.monotonic() - dev.connected_at, 1)})
        except FieldkitError as exc:
            log.warning("could not journal the disconnect of %s: %s", dev.name, exc)

    def _lost_report(self, dev: _Device, exc: FieldkitError | None = None) -> HealthReport:
        exc = exc or LinkLost(f"{dev.name}: link lost: {dev.down_reason}",
                              hint="fieldkit reconnects by itself; check the cable or network")
        return failed_report(dev.name, self.home, self.profile, exc, 3)

    def _released_report(self, dev: _Device) -> HealthReport:
        report = failed_report(dev.name, self.home, self.profile, ConnectError(dev.released_note), 0)
        report.status, report.exit_code = "released", 0
        return report

    def _emit(self, report: HealthReport) -> None:
        if self.on_report is None:
            return
        try:
            self.on_report(report)
        except Exception:  # a display callback's fault must not stop the watch
            log.debug("on_report failed for %s", report.device, exc_info=True)

    # ---- the background: dead links, release requests, the poll clock ----------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                devices = [self._devices[n] for n in self._order if n in self._devices]
            for dev in devices:
                try:
                    self._housekeep(dev)
                except Exception:
                    log.debug("housekeeping of %s failed", dev.name, exc_info=True)

    def _housekeep(self, dev: _Device) -> None:
        session = dev.session
        if session is not None and session.closed and not dev.polling and dev.lock.acquire(blocking=False):
            try:  # died between polls: say so now, not at the next poll
                lost = dev.session is session
                if lost:
                    self._lost(dev, session)
                    dev.report = self._lost_report(dev)
                    dev.due = dev.retry_at
            finally:
                dev.lock.release()
            if lost and dev.report is not None:
                self._emit(dev.report)
        if session is not None and dev.port is not None:
            self._answer_release(dev, session)
        if self._autopoll and not dev.polling and dev.holds == 0 and time.monotonic() >= dev.due:
            dev.polling = True
            try:
                self._pool.submit(self._poll_job, dev)
            except RuntimeError:  # shut down meanwhile
                dev.polling = False

    def _poll_job(self, dev: _Device) -> None:
        try:
            self.poll(dev.name)
        finally:
            dev.polling = False

    def _answer_release(self, dev: _Device, session: Any) -> None:
        from fieldkit.link import portlock

        port = dev.port
        assert port is not None
        req = portlock.pending_request(self.home, port)
        if req is None:
            return
        if dev.holds:
            portlock.answer_request(self.home, port, "busy",
                                    f"{dev.name} is open on a device screen of the fieldkit TUI; go back to the fleet")
            return
        if not session.idle:
            portlock.answer_request(self.home, port, "busy", f"an operation is running on {dev.name} "
                                    "(a checklist, an install or a benchmark); let it finish")
            return
        if dev.polling or not dev.lock.acquire(blocking=False):
            return  # a health poll is under way: answered on the next tick
        try:
            if dev.session is not session:
                return
            who = f"pid {req['pid']} ({req['program']})"
            dev.session = None
            session.close(f"released to {who} on request")
            dev.released_until = time.monotonic() + self.release_hold_s
            back = time.strftime("%H:%M:%S", time.localtime(time.time() + self.release_hold_s))
            dev.released_note = (f"serial port {port} handed to {who} at {time.strftime('%H:%M:%S')} on request; "
                                 f"fieldkit takes it back at {back}, or now on refresh")
            dev.due = dev.released_until
            try:
                self.journal.record(dev.name, "session.release", "ok", {
                    "port": port, "to_pid": req["pid"], "to_program": req["program"],
                    "back_after_s": self.release_hold_s})
            except FieldkitError as exc:
                log.warning("could not journal the release of %s: %s", dev.name, exc)
            portlock.answer_request(self.home, port, "released", f"it takes the port back at {back}, "
                                    "or sooner when refreshed there")
            dev.report = self._released_report(dev)
        finally:
            dev.lock.release()
        self._emit(dev.report)


# ---- the other side: asking a watch to let go of a serial port ----------------------------------------
def request_release(home: Home, spec: str, *, wait: float = 10.0) -> dict:
    """``fieldkit devices release DEVICE``: ask the fieldkit process holding the device's serial port
    (the TUI, ``health --watch``) to close its idle session. Returns ``{"port", "holder", "status"}``
    (``released``, or ``free`` when nobody in fieldkit held it); ConnectError (exit 3) when the holder
    keeps it (busy, with why) or does not answer within ``wait`` seconds; ConfigError for a device
    that is not on a serial line."""
    from fieldkit.devices import resolve
    from fieldkit.errors import ConfigError
    from fieldkit.link import portlock
    from fieldkit.link.targets import SerialTarget, parse_target

    dev = resolve(spec, home)
    target = parse_target(dev.target)
    if not isinstance(target, SerialTarget):
        raise ConfigError(f"{dev.name} is not on a serial line ({dev.target}): only a serial port is held by one "
                          "session at a time, so there is nothing to release")
    port = target.path
    holder = portlock.find_holder(home, port)
    if holder is None:
        return {"port": port, "holder": None, "status": "free"}
    who = holder.describe()
    portlock.request_release(home, port, dev.name)
    deadline = time.monotonic() + wait
    note = ""
    try:
        while time.monotonic() < deadline:
            answer = portlock.read_answer(home, port)
            note = (answer or {}).get("reason") or note
            if answer is not None and answer.get("answer") != "released":
                raise ConnectError(f"{dev.name}: {who} keeps serial port {port}: {answer.get('reason') or 'busy'}",
                                   hint="try again when it is idle, or close that fieldkit")
            if portlock.find_holder(home, port) is None:  # its record goes once the port is closed
                return {"port": port, "holder": portlock.as_json(holder), "status": "released", "note": note}
            time.sleep(0.1)
    finally:
        portlock.clear_request(home, port)
    raise ConnectError(f"{dev.name}: {who} did not let go of serial port {port} within {wait:g} s",
                       hint="a one-off command (not the TUI or `health --watch`) does not take requests: let it "
                            "finish; otherwise close that fieldkit")
