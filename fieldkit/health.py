"""Device health: measure on the device, judge against the profile's thresholds.

``measure`` asks the agent for real readings; ``evaluate`` turns them into checks, each
``ok``/``warn``/``crit`` with a reason, or ``n/a`` when the device has no such sensor.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fieldkit.checks import Check, worst
from fieldkit.errors import DeviceError, FieldkitError

log = logging.getLogger(__name__)

@dataclass
class HealthReport:
    device: str
    target: str
    profile: str
    status: str  # ok | warn | crit | unreachable
    checks: list[Check] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    clock_offset_s: float | None = None
    error: str | None = None
    exit_code: int = 0
    measured_at: float = field(default_factory=time.time)
    exception: FieldkitError | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        doc: dict[str, Any] = {
            "device": self.device,
            "target": self.target,
            "profile": self.profile,
            "status": self.status,
            "checks": [c.to_json() for c in self.checks],
        }
        if self.error:
            doc["error"] = self.error
            return doc
        r = self.raw
        doc.update({
            "cpu": dict(r.get("cpu") or {}, frequency=r.get("cpufreq")),
            "memory": r.get("memory"),
            "disks": r.get("disks"),
            "temperatures": r.get("temperatures"),
            "throttling": r.get("throttling"),
            "uptime_s": r.get("uptime_s"),
            "clock_offset_s": self.clock_offset_s,
            "runtime": r.get("runtime"),
            "agent": r.get("agent"),
            "service": r.get("service"),
            "system": {k: r.get(k) for k in ("hostname", "os", "kernel", "machine")},
            "hardware": r.get("identity"),
        })
        return doc


def _grade(name: str, value: float | None, th: Any, fmt: str, what: str) -> Check:
    """Higher is worse. ``th`` has ``warn`` and ``crit``."""
    limits = {"warn": th.warn, "crit": th.crit}
    if value is None:
        return Check(name, "n/a", f"{what}: not available on this device", None, limits)
    shown = fmt.format(value)
    if value >= th.crit:
        return Check(name, "crit", f"{what} {shown} at or above the critical limit {fmt.format(th.crit)}", value, limits)
    if value >= th.warn:
        return Check(name, "warn", f"{what} {shown} at or above the warning limit {fmt.format(th.warn)}", value, limits)
    return Check(name, "ok", f"{what} {shown} (warn at {fmt.format(th.warn)})", value, limits)


def _cpu_check(cpu: dict, th: Any) -> Check:
    """CPU busy, saying how it was measured: over which window, and how much of it was fieldkit's
    own work (taken out by agents that report ``excluded_self_percent``; older ones count it)."""
    c = _grade("cpu", cpu.get("percent"), th, "{:.0f} %", "CPU busy")
    value = cpu.get("percent")
    if value is None:
        return c
    how = f" over {cpu['window_s']:.2g} s" if cpu.get("window_s") is not None else ""
    excluded = cpu.get("excluded_self_percent")
    own = (f"fieldkit's own {excluded:.0f} % excluded" if excluded is not None
           else "fieldkit's own work included: older agent")
    head = f"CPU busy {value:.0f} %"
    if c.status == "ok":
        c.message = f"{head}{how} ({own}; warn at {th.warn:.0f} %)"
    else:
        c.message = f"{head}{how} ({own}) " + c.message[len(head):].lstrip()
    return c


def identity_of(raw: dict) -> Any:
    """The device's identity (fieldkit.wire.IdentityResult) from a report's readings, or None."""
    from pydantic import ValidationError

    from fieldkit.wire import IdentityResult

    doc = raw.get("identity")
    if not isinstance(doc, dict):
        return None
    try:
        return IdentityResult.model_validate(doc)
    except ValidationError:
        return None


def _hardware_check(raw: dict, profile: Any) -> Check | None:
    """A warning when the profile was written for other hardware than the device says it is
    (fieldkit.hardware.mismatch); nothing when it fits or the hardware is not known."""
    from fieldkit.hardware import mismatch

    ident = identity_of(raw)
    if ident is None:
        return None
    text = mismatch(getattr(profile, "name", ""), ident)
    if text is None:
        return None
    return Check("hardware", "warn", text, ident.model)


def evaluate(raw: dict, profile: Any, clock_offset_s: float | None) -> list[Check]:
    t = profile.thresholds
    checks: list[Check] = []
    hardware = _hardware_check(raw, profile)
    if hardware is not None:  # first: every verdict below is judged by the profile's limits
        checks.append(hardware)
    cpu = raw.get("cpu") or {}
    checks.append(_cpu_check(cpu, t.cpu_percent))
    load = cpu.get("load")
    cores = cpu.get("count") or 1
    checks.append(_grade("load", None if not load else round(load[0] / cores, 2), t.load_per_core,
                         "{:.2f}", f"1-min load per core ({cores} cores)"))

    mem = raw.get("memory") or {}
    checks.append(_grade("memory", mem.get("used_percent"), t.memory_used_percent, "{:.0f} %", "memory used"))
    if mem and not mem.get("swap_total"):
        checks.append(Check("swap", "ok", "no swap configured", 0.0))
    else:
        checks.append(_grade("swap", mem.get("swap_used_percent"), t.swap_used_percent, "{:.0f} %", "swap used"))
    headroom = getattr(getattr(profile, "memory", None), "headroom_mb", None)
    if mem.get("available") is not None and headroom:
        avail_mb = mem["available"] / 2**20
        status = "ok" if avail_mb >= headroom else "warn"
        checks.append(Check("memory_headroom", status,
                            f"{avail_mb:.0f} MB available; the profile keeps {headroom} MB free for OS, runtime and logging"
                            + ("" if status == "ok" else ": little room left to load a model"),
                            round(avail_mb), {"min_mb": headroom}))

    for disk in raw.get("disks") or []:
        label = disk.get("label", "disk")
        if disk.get("used_percent") is None:
            checks.append(Check(f"disk:{label}", "n/a", f"{label} filesystem: {disk.get('error', 'not available')}", None))
            continue
        c = _grade(f"disk:{label}", disk["used_percent"], t.disk_used_percent, "{:.0f} %",
                   f"{label} filesystem ({disk.get('path')} on {disk.get('mount')}) used")
        c.message += f", {disk.get('free', 0) / 2**30:.1f} GiB free"
        checks.append(c)

    zones = raw.get("temperatures") or []
    if not zones:
        checks.append(Check("temperature", "n/a", "no thermal zones: temperature not available on this device", None))
    for z in zones:
        limit = t.temperature_for(z["type"]) if hasattr(t, "temperature_for") else t.temperature_c
        checks.append(_grade(f"temp:{z['type']}", z["temp_c"], limit, "{:.1f} °C", f"{z['type']} ({z['zone']})"))

    checks.append(_throttle_check(raw.get("throttling") or {}, cpu))

    if clock_offset_s is None:
        checks.append(Check("clock", "n/a", "clock offset not measured", None))
    else:
        c = _grade("clock", abs(clock_offset_s), t.clock_offset_s, "{:.2f} s", "clock offset from this laptop")
        c.value = round(clock_offset_s, 3)
        if c.status != "ok":
            c.message += (": device clock is " + ("ahead" if clock_offset_s > 0 else "behind")
                          + "; logs and certificates depend on it (check NTP/RTC)")
        checks.append(c)

    rt = raw.get("runtime") or {}
    if rt.get("onnxruntime"):
        checks.append(Check("onnxruntime", "ok",
                            f"onnxruntime {rt['onnxruntime']} ({', '.join(rt.get('providers') or [])})", rt["onnxruntime"]))
    else:
        checks.append(Check("onnxruntime", "warn",
                            (rt.get("onnxruntime_error") or "onnxruntime is not installed")
                            + ": models cannot be benchmarked or run on this device", None))

    svc = raw.get("service")
    if svc:
        state = svc.get("state")
        unit = svc.get("unit")
        if state == "active":
            checks.append(Check("service", "ok", f"{unit} is running", state))
        elif state in ("not available",):
            checks.append(Check("service", "n/a", f"{unit}: {svc.get('detail', 'systemd not available')}", state))
        elif state == "not-found":
            checks.append(Check("service", "warn", f"{unit} is not installed on the device", state))
        else:
            checks.append(Check("service", "crit", f"{unit} is {state}: the inference service is not running", state))
    return checks


def _throttle_check(th: dict, cpu: dict) -> Check:
    now = {k for k, v in (th.get("now") or {}).items() if v}
    past = {k for k, v in (th.get("since_boot") or {}).items() if v}
    if th.get("source") == "vcgencmd":
        if now & {"under_voltage", "throttled"}:
            return Check("throttling", "crit",
                         f"throttled now ({', '.join(sorted(now))}): check the power supply and cooling", th.get("raw"))
        if now:
            return Check("throttling", "warn", f"limited now ({', '.join(sorted(now))})", th.get("raw"))
        if past:
            return Check("throttling", "warn",
                         f"not throttled now, but since boot: {', '.join(sorted(past))}", th.get("raw"))
        return Check("throttling", "ok", "no throttling reported by the firmware", th.get("raw"))
    if th.get("max_mhz"):
        cur, mx = th.get("cur_max_mhz"), th["max_mhz"]
        busy = (cpu.get("percent") or 0) >= 80
        if busy and cur and cur < 0.7 * mx:
            return Check("throttling", "warn",
                         f"CPU busy but running at {cur} of {mx} MHz: frequency capped (thermal or power)", cur)
        return Check("throttling", "ok", f"CPU at up to {cur} of {mx} MHz", cur)
    return Check("throttling", "n/a", "no throttle or frequency information on this device", None)


def measure(session: Any, *, sample_s: float = 0.25, timeout: float = 30.0,
            cancel: Any = None) -> tuple[dict, float]:
    """Ask the agent of an open :class:`~fieldkit.devices.DeviceSession` for readings judged by its
    profile; returns (raw readings, clock_offset_s). The readings were validated at the session."""
    profile = session.profile
    paths = profile.paths
    args = {
        "paths": {"models": paths.models, "staging": paths.staging},
        "service_unit": profile.service.unit if profile.service else None,
        "sample_s": sample_s,
    }
    t0 = time.time()
    # Measure the clock offset with a quick ping first (health itself takes sample_s).
    ping = session.call("ping", timeout=timeout, cancel=cancel)
    half_trip = max(0.0, time.time() - t0) / 2
    offset = ping.time - (t0 + half_trip)
    if abs(offset) <= half_trip:
        # The device's clock read falls inside the round trip: no offset this link can resolve (and a
        # device on this machine's clock reads 0, not the noise of how busy the machine was).
        offset = 0.0
    raw = session.call("health", args, timeout=timeout, cancel=cancel).model_dump()
    try:  # what hardware this is: asked once per session, judged against the profile in evaluate()
        ident = session.identity(timeout=timeout)
    except DeviceError as exc:  # the readings stand without it
        log.debug("identity of %s not usable: %s", session.name, exc)
        ident = None
    if ident is not None:
        raw["identity"] = ident.model_dump()
    return raw, offset


def report_from(device: str, target: str, profile: Any, raw: dict, offset: float | None) -> HealthReport:
    checks = evaluate(raw, profile, offset)
    status = worst([c.status for c in checks])
    return HealthReport(device=device, target=target, profile=profile.name, status=status, checks=checks,
                        raw=raw, clock_offset_s=None if offset is None else round(offset, 3),
                        exit_code=1 if status == "crit" else 0)


RECORD_MODES = ("always", "changes", "never")


def check_session(session: Any, *, profile: Any = None, sample_s: float = 0.25, timeout: float = 15.0,
                  cancel: Any = None, record: str = "always", last_status: str | None = None) -> HealthReport:
    """Measure and judge over an open session, and journal it as ``record`` says.

    ``record="always"``: this check is an entry (a one-shot ``fieldkit health``). ``"changes"``: only
    when the status differs from ``last_status`` (None: the first sample), with the previous status —
    the fleet and ``--watch`` keep sessions open for hours, and the journal should hold each change
    and its reason, not every sample. ``"never"``: the caller journals. ``profile`` overrides the
    session's (a profile edited while a long-lived session stays open). Raises like ``measure``."""
    if record not in RECORD_MODES:
        raise ValueError(f"record must be one of {', '.join(RECORD_MODES)}, not {record!r}")
    raw, offset = measure(session, sample_s=sample_s, timeout=timeout, cancel=cancel)
    report = report_from(session.name, session.target, profile or session.profile, raw, offset)
    if record == "always":
        record_health(session, report)
    elif record == "changes" and report.status != last_status:
        record_health(session, report, previous=last_status or "none")
    return report


def check_device(spec: str, home: Any, *, sample_s: float = 0.25, timeout: float = 15.0,
                 profile: str | None = None, journal: Any = None) -> HealthReport:
    """Connect to one device (inventory name or target), measure, judge and journal. Never raises
    for device problems: an unreachable device becomes a report with status ``unreachable``, a
    device that refuses or answers nonsense one with status ``crit`` and the reason."""
    from fieldkit.devices import open_session

    try:
        with open_session(spec, home, journal=journal, profile=profile, timeout=timeout) as session:
            return check_session(session, sample_s=sample_s, timeout=timeout)
    except FieldkitError as exc:
        return failed_report(spec, home, profile, exc, exc.exit_code)
    except Exception as exc:  # a fault of fieldkit's: this device's report says so, the others go on
        log.debug("health check of %s failed", spec, exc_info=True)
        return failed_report(spec, home, profile, exc, 4)


def failed_report(spec: str, home: Any, profile: str | None, exc: Exception, exit_code: int) -> HealthReport:
    from fieldkit.devices import resolve

    try:
        dev = resolve(spec, home, profile)
        name, target, prof = dev.name, dev.target, dev.profile.name
    except FieldkitError:
        name, target, prof = spec[:120], spec[:120], profile or "-"
    message = str(exc) if isinstance(exc, FieldkitError) else f"internal error: {type(exc).__name__}: {exc}"
    return HealthReport(device=name, target=target, profile=prof,
                        status="unreachable" if exit_code == 3 else "crit", error=message, exit_code=exit_code,
                        exception=exc if isinstance(exc, FieldkitError) else None)


def record_health(session: Any, report: HealthReport, previous: str | None = None) -> None:
    """Write a health check to the operator journal of the session it was measured through;
    ``previous``: the status it changed from (sessions that journal changes only)."""
    details = {
        "status": report.status, "profile": report.profile,
        "problems": [f"{c.name}: {c.message}" for c in report.checks if c.status in ("warn", "crit")],
        "clock_offset_s": report.clock_offset_s,
    }
    if previous is not None:
        details["previous"] = previous
    session.record("health.check", "ok", details)


def check_many(specs: list[str], home: Any, *, max_workers: int = 8, **kw: Any) -> list[HealthReport]:
    """Health of several devices at once (bounded pool, one shared journal), in the order given.
    One device's failure never stops the others."""
    from fieldkit.journal import Journal

    with Journal.open(home) as journal:
        if len(specs) == 1:
            return [check_device(specs[0], home, journal=journal, **kw)]
        with ThreadPoolExecutor(max_workers=min(max_workers, len(specs))) as pool:
            return list(pool.map(lambda s: check_device(s, home, journal=journal, **kw), specs))
