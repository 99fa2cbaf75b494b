"""Device health: measure on the device, judge against the profile's thresholds.

``measure`` asks the agent for real readings; ``evaluate`` turns them into checks, each
``ok``/``warn``/``crit`` with a reason, or ``n/a`` when the device has no such sensor.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from fieldkit.errors import FieldkitError

RANK = {"n/a": -1, "ok": 0, "warn": 1, "crit": 2, "unreachable": 3}


@dataclass
class Check:
    name: str
    status: str  # ok | warn | crit | n/a
    value: Any
    message: str
    threshold: dict | None = None


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
            "checks": [asdict(c) for c in self.checks],
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
        })
        return doc


def worst(statuses: list[str]) -> str:
    real = [s for s in statuses if s in ("ok", "warn", "crit", "unreachable")]
    return max(real, key=RANK.__getitem__) if real else "ok"


def _grade(name: str, value: float | None, th: Any, fmt: str, what: str) -> Check:
    """Higher is worse. ``th`` has ``warn`` and ``crit``."""
    limits = {"warn": th.warn, "crit": th.crit}
    if value is None:
        return Check(name, "n/a", None, f"{what}: not available on this device", limits)
    shown = fmt.format(value)
    if value >= th.crit:
        return Check(name, "crit", value, f"{what} {shown} at or above the critical limit {fmt.format(th.crit)}", limits)
    if value >= th.warn:
        return Check(name, "warn", value, f"{what} {shown} at or above the warning limit {fmt.format(th.warn)}", limits)
    return Check(name, "ok", value, f"{what} {shown} (warn at {fmt.format(th.warn)})", limits)


def evaluate(raw: dict, profile: Any, clock_offset_s: float | None) -> list[Check]:
    t = profile.thresholds
    checks: list[Check] = []
    cpu = raw.get("cpu") or {}
    checks.append(_grade("cpu", cpu.get("percent"), t.cpu_percent, "{:.0f} %", "CPU busy"))
    load = cpu.get("load")
    cores = cpu.get("count") or 1
    checks.append(_grade("load", None if not load else round(load[0] / cores, 2), t.load_per_core,
                         "{:.2f}", f"1-min load per core ({cores} cores)"))

    mem = raw.get("memory") or {}
    checks.append(_grade("memory", mem.get("used_percent"), t.memory_used_percent, "{:.0f} %", "memory used"))
    if mem and not mem.get("swap_total"):
        checks.append(Check("swap", "ok", 0.0, "no swap configured"))
    else:
        checks.append(_grade("swap", mem.get("swap_used_percent"), t.swap_used_percent, "{:.0f} %", "swap used"))
    headroom = getattr(getattr(profile, "memory", None), "headroom_mb", None)
    if mem.get("available") is not None and headroom:
        avail_mb = mem["available"] / 2**20
        status = "ok" if avail_mb >= headroom else "warn"
        checks.append(Check("memory_headroom", status, round(avail_mb),
                            f"{avail_mb:.0f} MB available; the profile keeps {headroom} MB free for OS, runtime and logging"
                            + ("" if status == "ok" else ": little room left to load a model"),
                            {"min_mb": headroom}))

    for disk in raw.get("disks") or []:
        label = disk.get("label", "disk")
        if disk.get("used_percent") is None:
            checks.append(Check(f"disk:{label}", "n/a", None, f"{label} filesystem: {disk.get('error', 'not available')}"))
            continue
        c = _grade(f"disk:{label}", disk["used_percent"], t.disk_used_percent, "{:.0f} %",
                   f"{label} filesystem ({disk.get('path')} on {disk.get('mount')}) used")
        c.message += f", {disk.get('free', 0) / 2**30:.1f} GiB free"
        checks.append(c)

    zones = raw.get("temperatures") or []
    if not zones:
        checks.append(Check("temperature", "n/a", None, "no thermal zones: temperature not available on this device"))
    for z in zones:
        limit = t.temperature_for(z["type"]) if hasattr(t, "temperature_for") else t.temperature_c
        checks.append(_grade(f"temp:{z['type']}", z["temp_c"], limit, "{:.1f} °C", f"{z['type']} ({z['zone']})"))

    checks.append(_throttle_check(raw.get("throttling") or {}, cpu))

    if clock_offset_s is None:
        checks.append(Check("clock", "n/a", None, "clock offset not measured"))
    else:
        c = _grade("clock", abs(clock_offset_s), t.clock_offset_s, "{:.2f} s", "clock offset from this laptop")
        c.value = round(clock_offset_s, 3)
        if c.status != "ok":
            c.message += (": device clock is " + ("ahead" if clock_offset_s > 0 else "behind")
                          + "; logs and certificates depend on it (check NTP/RTC)")
        checks.append(c)

    rt = raw.get("runtime") or {}
    if rt.get("onnxruntime"):
        checks.append(Check("onnxruntime", "ok", rt["onnxruntime"],
                            f"onnxruntime {rt['onnxruntime']} ({', '.join(rt.get('providers') or [])})"))
    else:
        checks.append(Check("onnxruntime", "warn", None,
                            (rt.get("onnxruntime_error") or "onnxruntime is not installed")
                            + ": models cannot be benchmarked or run on this device"))

    svc = raw.get("service")
    if svc:
        state = svc.get("state")
        unit = svc.get("unit")
        if state == "active":
            checks.append(Check("service", "ok", state, f"{unit} is running"))
        elif state in ("not available",):
            checks.append(Check("service", "n/a", state, f"{unit}: {svc.get('detail', 'systemd not available')}"))
        elif state == "not-found":
            checks.append(Check("service", "warn", state, f"{unit} is not installed on the device"))
        else:
            checks.append(Check("service", "crit", state, f"{unit} is {state}: the inference service is not running"))
    return checks


def _throttle_check(th: dict, cpu: dict) -> Check:
    now = {k for k, v in (th.get("now") or {}).items() if v}
    past = {k for k, v in (th.get("since_boot") or {}).items() if v}
    if th.get("source") == "vcgencmd":
        if now & {"under_voltage", "throttled"}:
            return Check("throttling", "crit", th.get("raw"),
                         f"throttled now ({', '.join(sorted(now))}): check the power supply and cooling")
        if now:
            return Check("throttling", "warn", th.get("raw"), f"limited now ({', '.join(sorted(now))})")
        if past:
            return Check("throttling", "warn", th.get("raw"),
                         f"not throttled now, but since boot: {', '.join(sorted(past))}")
        return Check("throttling", "ok", th.get("raw"), "no throttling reported by the firmware")
    if th.get("max_mhz"):
        cur, mx = th.get("cur_max_mhz"), th["max_mhz"]
        busy = (cpu.get("percent") or 0) >= 80
        if busy and cur and cur < 0.7 * mx:
            return Check("throttling", "warn", cur,
                         f"CPU busy but running at {cur} of {mx} MHz: frequency capped (thermal or power)")
        return Check("throttling", "ok", cur, f"CPU at up to {cur} of {mx} MHz")
    return Check("throttling", "n/a", None, "no throttle or frequency information on this device")


def measure(link: Any, profile: Any, *, sample_s: float = 0.25, timeout: float = 30.0,
            cancel: Any = None) -> tuple[dict, float]:
    """Ask the agent for readings; returns (raw, clock_offset_s)."""
    paths = profile.paths
    args = {
        "paths": {"models": paths.models, "staging": paths.staging},
        "service_unit": profile.service.unit if getattr(profile, "service", None) else None,
        "sample_s": sample_s,
    }
    t0 = time.time()
    m0 = time.monotonic()
    # Measure the clock offset with a quick ping first (health itself takes sample_s).
    ping = link.call("ping", timeout=timeout, cancel=cancel)
    m1 = time.monotonic()
    offset = ping["time"] - (t0 + (m1 - m0) / 2)
    raw = link.call("health", args, timeout=timeout, cancel=cancel)
    return raw, offset


def report_from(device: str, target: str, profile: Any, raw: dict, offset: float | None) -> HealthReport:
    checks = evaluate(raw, profile, offset)
    status = worst([c.status for c in checks])
    return HealthReport(device=device, target=target, profile=profile.name, status=status, checks=checks,
                        raw=raw, clock_offset_s=None if offset is None else round(offset, 3),
                        exit_code=1 if status == "crit" else 0)


def check_device(spec: str, home: Any, *, sample_s: float = 0.25, timeout: float = 15.0,
                 profile: str | None = None) -> HealthReport:
    """Connect to one device (inventory name or target), measure and judge. Never raises for
    device problems: an unreachable device becomes a report with status ``unreachable``."""
    from fieldkit.link.connect import connect, resolve

    dev = resolve(spec, home, profile)
    try:
        with connect(dev, home, timeout=timeout) as link:
            raw, offset = measure(link, dev.profile, sample_s=sample_s, timeout=timeout)
        report = report_from(dev.name, dev.target, dev.profile, raw, offset)
        record_health(link, report)
        return report
    except FieldkitError as exc:
        return HealthReport(device=dev.name, target=dev.target, profile=dev.profile.name,
                            status="unreachable" if exc.exit_code == 3 else "crit",
                            error=str(exc), exit_code=exc.exit_code, exception=exc)


def record_health(link: Any, report: HealthReport) -> None:
    """Write a health check to the operator journal (through the link's journal seam)."""
    journal = getattr(link, "journal", None)
    if journal is None:
        return
    journal.record(report.device, "health.check", "ok", {
        "status": report.status, "profile": report.profile,
        "problems": [f"{c.name}: {c.message}" for c in report.checks if c.status in ("warn", "crit")],
        "clock_offset_s": report.clock_offset_s,
    })


def check_many(specs: list[str], home: Any, *, max_workers: int = 8, **kw: Any) -> list[HealthReport]:
    """Health of several devices at once (bounded pool), in the order given."""
    if len(specs) == 1:
        return [check_device(specs[0], home, **kw)]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(specs))) as pool:
        return list(pool.map(lambda s: check_device(s, home, **kw), specs))
