"""Benchmark verdicts and reports: judge a measurement, save it, list and compare saved runs.

The measurement comes from :mod:`fieldkit.bench`; this module holds what is done with it after.

Verdict rules (:func:`verdict`), each a :class:`~fieldkit.checks.Check`; any ``fail`` fails the run,
else any ``warn`` warns:

* latency: the use case's metric (p90 / p95 / p99; p99 with ``--budget-ms`` alone) must be within
  the budget. For p90 and p99 the early-stopping estimate is used when there were enough runs (it
  is the conservative figure); otherwise the plain percentile. Within budget but above 90 % of it
  warns (no margin). No budget at all warns: nothing to judge latency against.
* statistics: fewer runs than early stopping needs for p90 (``valid`` false) warns; a run cut
  short by the time limit warns.
* deadlines: with ``--rate``, any missed deadline fails. Without ``--rate``, a use case with a
  ``rate_hz`` fails when back-to-back throughput is below that rate.
* memory: the lowest MemAvailable during the run must stay at or above the profile's
  ``memory.headroom_mb``; any swap-in or swap-out during the run fails.
* heat: a thermal zone at or above the profile's critical temperature fails, at or above warning
  warns; firmware throttle or under-voltage flags raised during the run fail.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from datetime import datetime
from typing import Any, Callable

from fieldkit.checks import Check, worst
from fieldkit.errors import ConfigError
from fieldkit.fsutil import atomic_write_json

DEFAULT_METRIC = "p99"
MARGIN = 0.9  # within budget but above this fraction of it: warn
REPORT_KIND = "fieldkit.bench"
REPORT_SCHEMA = 1
MIB = 1024 * 1024

# Keys of the device's measurement that the JSON report carries at its top level.
RESULT_KEYS = (
    "session_create_ms", "first_run_ms", "warmup_runs", "runs", "duration_s", "stop_reason",
    "latency_ms", "p90_early_stopping_ms", "p99_early_stopping_ms", "valid", "early_stopping_min_runs",
    "throughput_ips", "cpu_percent", "peak_rss_bytes", "memory", "thermal", "cpufreq", "throttle",
    "rate_hz", "deadline_misses", "late_runs", "latencies_ms", "inputs", "providers", "onnxruntime",
)

# --------------------------------------------------------------------------------------------------
# Verdict

@dataclass
class Verdict:
    status: str  # pass | warn | fail
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"status": self.status, "reasons": list(self.reasons), "checks": [c.to_json() for c in self.checks]}

    @classmethod
    def from_json(cls, doc: dict) -> "Verdict":
        return cls(doc.get("status", "warn"), list(doc.get("reasons") or []),
                   [Check.from_json(c) for c in doc.get("checks") or [] if isinstance(c, dict)])


def fmt_ms(value: float | None) -> str:
    """Milliseconds with three significant figures: 148 ms, 14.8 ms, 1.48 ms, 0.123 ms."""
    if value is None:
        return "-"
    v = float(value)
    if v >= 100:
        return f"{v:.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v:.3g} ms"


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:,.0f} MB"


def _is_int8(model: dict) -> bool:
    text = " ".join(str(model.get(k) or "") for k in ("name", "path", "device_path")).lower()
    return any(tag in text for tag in ("int8", "uint8", "quant", "qdq"))


def _latency_check(doc: dict, profile_name: str, use_case: str | None, budget: float | None,
                   metric: str) -> list[Check]:
    lat = doc.get("latency_ms") or {}
    runs = int(doc.get("runs") or 0)
    if budget is None:
        return [Check("latency", "warn", f"no latency budget to judge against: give --use-case NAME (the {profile_name} "
                      "profile's use cases) or --budget-ms MS", lat.get(metric))]
    es_key = {"p90": "p90_early_stopping_ms", "p99": "p99_early_stopping_ms"}.get(metric)
    es_value = doc.get(es_key) if es_key else None
    need = (doc.get("early_stopping_min_runs") or {}).get(metric) or {"p90": 64, "p99": 662}.get(metric)
    if es_value is not None:
        value, label, note = es_value, f"{metric} (early-stopping estimate)", ""
    else:
        value, label = lat.get(metric), metric
        note = (f" (plain percentile of {runs} runs; {need}+ runs give MLPerf's early-stopping estimate)"
                if es_key and need and runs < need else "")
    if value is None:
        return [Check("latency", "fail", "no latency was measured", None, budget)]
    whom = f"for {use_case}" if use_case else "given with --budget-ms"
    p50 = lat.get("p50")
    if value > budget:
        threads = (doc.get("settings") or {}).get("threads")
        int8 = _is_int8(doc.get("model") or {})
        if p50 is not None and p50 > budget:
            options = ([] if int8 else ["the int8 variant"]) + ["a smaller model", "a faster device"]
            advice = f"even the median run takes {fmt_ms(p50)}; try " + ", ".join(options[:-1]) + " or " + options[-1]
        else:
            options = ([] if int8 else ["the int8 variant"]) + (["fewer threads"] if threads != 1 else []) + ["--spin off"]
            advice = "try " + (", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else options[0])
        return [Check("latency", "fail", f"{label} {fmt_ms(value)} exceeds the {budget:g} ms budget {whom}; {advice}",
                      value, budget)]
    if value > MARGIN * budget:
        return [Check("latency", "warn", f"{label} {fmt_ms(value)} is within the {budget:g} ms budget {whom} but with "
                      f"less than {100 - MARGIN * 100:.0f} % to spare; heat or other load on the device may push it over"
                      + note, value, budget)]
    return [Check("latency", "pass", f"{label} {fmt_ms(value)} is within the {budget:g} ms budget {whom} "
                  f"({100 * value / budget:.0f} % of it){note}", value, budget)]


def verdict(doc: dict, profile: Any, *, use_case: str | None = None, budget_ms: float | None = None,
            metric: str | None = None) -> Verdict:
    """Judge a measurement (a report's JSON document, or the device's raw result plus ``settings``
    and ``model``) against ``profile`` and the use case's budget. See the module docstring."""
    uc = profile.use_case(use_case) if use_case else None
    budget = budget_ms if budget_ms is not None else (uc.budget_ms if uc else None)
    metric = metric or (uc.metric if uc else DEFAULT_METRIC)
    checks = _latency_check(doc, profile.name, use_case, budget, metric)
    settings = doc.get("settings") or {}
    lat = doc.get("latency_ms") or {}
    runs = int(doc.get("runs") or 0)

    # statistics
    need90 = (doc.get("early_stopping_min_runs") or {}).get("p90", 64)
    if doc.get("valid"):
        checks.append(Check("runs", "pass", f"{runs} timed runs: enough for MLPerf's p90 early-stopping estimate "
                            f"(needs {need90})", runs, need90))
    else:
        checks.append(Check("runs", "warn", f"only {runs} timed runs: the statistics are not trustworthy (MLPerf "
                            f"early stopping needs at least {need90} for p90); run longer with --duration or --runs",
                            runs, need90))
    if doc.get("stop_reason") == "max_seconds":
        wanted = settings.get("runs")
        checks.append(Check("time_limit", "warn", f"stopped at the {settings.get('max_seconds') or 'default'} s time limit "
                            f"after {runs}" + (f" of {wanted}" if wanted else "") + " runs; raise --max-seconds",
                            runs, wanted))

    # deadlines / rate
    rate = doc.get("rate_hz") or settings.get("rate_hz")
    if rate:
        misses = int(doc.get("deadline_misses") or 0)
        if misses:
            mean = lat.get("mean")
            capacity = f"; back to back it manages about {1000.0 / mean:.0f} runs/s" if mean else ""
            checks.append(Check("deadlines", "fail", f"missed {misses} deadline{'s' if misses != 1 else ''} at {rate:g} Hz ({doc.get('late_runs', 0)} "
                                f"of {runs} runs overran their {1000.0 / rate:.3g} ms slot, p99 {fmt_ms(lat.get('p99'))})"
                                f"{capacity}: lower the rate or use a faster model", misses, 0))
        else:
            checks.append(Check("deadlines", "pass", f"no missed deadlines in {runs} runs at {rate:g} Hz", 0, 0))
    elif uc is not None and uc.rate_hz and doc.get("throughput_ips") is not None:
        thr = float(doc["throughput_ips"])
        status = "pass" if thr >= uc.rate_hz else "fail"
        text = (f"back to back it runs {thr:.1f} times per second, " +
                (f"enough for the {uc.rate_hz:g} per second {use_case} needs" if status == "pass" else
                 f"below the {uc.rate_hz:g} per second {use_case} needs; try the int8 variant or a faster device"))
        checks.append(Check("rate", status, text, thr, uc.rate_hz))

    # memory
    mem = doc.get("memory") or {}
    headroom = getattr(getattr(profile, "memory", None), "headroom_mb", None)
    low = mem.get("available_min")
    rss = doc.get("peak_rss_bytes")
    own = f"; the benchmark process peaked at {_mb(rss)}" if rss else ""
    if low is None:
        checks.append(Check("memory", "n/a", "free memory (MemAvailable) could not be read on the device"))
    elif headroom is not None and low < headroom * MIB:
        checks.append(Check("memory", "fail", f"free memory fell to {_mb(low)} during the run; the {profile.name} profile "
                            f"keeps {headroom} MB for the OS, runtime and logging{own}: stop other services or use a "
                            "smaller (int8) model", low, headroom * MIB))
    else:
        checks.append(Check("memory", "pass", f"free memory stayed at or above {_mb(low)} (the profile keeps "
                            f"{headroom} MB){own}", low, None if headroom is None else headroom * MIB))
    sin, sout = mem.get("swap_in_pages"), mem.get("swap_out_pages")
    if sin is None and sout is None:
        checks.append(Check("swap", "n/a", "swap activity could not be read on the device"))
    elif (sin or 0) + (sout or 0) > 0:
        checks.append(Check("swap", "fail", f"the device swapped during the run ({sin or 0} pages in, {sout or 0} out): "
                            "latency will not hold; free memory or use a smaller model", (sin or 0) + (sout or 0), 0))
    else:
        checks.append(Check("swap", "pass", "no swapping during the run", 0, 0))

    # heat and throttling
    zones = doc.get("thermal") or {}
    th = getattr(profile, "thresholds", None)
    if not zones:
        checks.append(Check("temperature", "n/a", "no thermal zones on the device: temperature not measured"))
    for zone, t in sorted(zones.items()):
        peak = t.get("max")
        kind = zone.split(":", 1)[0]
        limit = th.temperature_for(kind) if th is not None and hasattr(th, "temperature_for") else None
        if peak is None or limit is None:
            continue
        span = f"{t.get('start', peak):.0f} -> {peak:.0f} °C (end {t.get('end', peak):.0f} °C)"
        if peak >= limit.crit:
            checks.append(Check(f"temperature:{zone}", "fail", f"{zone} reached {peak:.0f} °C, at or above the "
                                f"{profile.name} critical limit of {limit.crit:g} °C: the device will throttle under "
                                "sustained load; improve cooling or lower the load", peak, limit.crit))
        elif peak >= limit.warn:
            checks.append(Check(f"temperature:{zone}", "warn", f"{zone} reached {peak:.0f} °C, at or above the warning "
                                f"limit of {limit.warn:g} °C; a longer run (--sustained) will show whether it throttles",
                                peak, limit.warn))
        else:
            checks.append(Check(f"temperature:{zone}", "pass", f"{zone} {span}", peak, limit.warn))
    throttle = doc.get("throttle")
    if throttle:
        during = sorted(k for k, v in (throttle.get("during_run") or {}).items() if v)
        now = sorted(k for k, v in (throttle.get("now") or {}).items() if v)
        flags = sorted(set(during) | set(now))
        if flags:
            checks.append(Check("throttling", "fail", f"the firmware reported {', '.join(f.replace('_', '-') for f in flags)} "
                                "during the run: the timings are not what the device sustains; check the power supply "
                                "and cooling", flags))
        else:
            checks.append(Check("throttling", "pass", "no throttling or under-voltage reported by the firmware"))
    else:
        checks.append(Check("throttling", "n/a", "no firmware throttle flags on this device"))

    status = worst((c.status for c in checks), default="pass")
    reasons = [c.message for c in checks if c.status == "fail"] + [c.message for c in checks if c.status == "warn"]
    return Verdict(status, reasons, checks)


# --------------------------------------------------------------------------------------------------
# Reports

@dataclass
class BenchReport:
    """One benchmark run: where, what, how, the device's measurement and the verdict."""

    id: str
    created_at: str
    device: str
    target: str
    transport: str
    profile: str
    use_case: str | None
    budget_ms: float | None
    metric: str
    model: dict
    settings: dict
    result: dict
    verdict: Verdict
    agent: dict = field(default_factory=dict)
    path: Path | None = None  # where it was saved or loaded from

    @property
    def status(self) -> str:
        return self.verdict.status

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict.status == "fail" else 0

    def to_json(self) -> dict:
        doc: dict[str, Any] = {
            "kind": REPORT_KIND,
            "schema": REPORT_SCHEMA,
            "id": self.id,
            "created_at": self.created_at,
            "device": self.device,
            "target": self.target,
            "transport": self.transport,
            "profile": self.profile,
            "use_case": self.use_case,
            "budget_ms": self.budget_ms,
            "metric": self.metric,
            "model": self.model,
            "settings": self.settings,
        }
        for key in RESULT_KEYS:
            doc[key] = self.result.get(key)
        doc["agent"] = self.agent
        doc["verdict"] = self.verdict.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: dict, path: Path | None = None) -> "BenchReport":
        if doc.get("kind") != REPORT_KIND:
            raise ConfigError(f"{path or 'document'}: not a fieldkit bench report")
        return cls(
            id=str(doc.get("id")), created_at=str(doc.get("created_at")), device=str(doc.get("device")),
            target=str(doc.get("target")), transport=str(doc.get("transport")), profile=str(doc.get("profile")),
            use_case=doc.get("use_case"), budget_ms=doc.get("budget_ms"), metric=doc.get("metric") or DEFAULT_METRIC,
            model=dict(doc.get("model") or {}), settings=dict(doc.get("settings") or {}),
            result={k: doc.get(k) for k in RESULT_KEYS}, verdict=Verdict.from_json(doc.get("verdict") or {}),
            agent=dict(doc.get("agent") or {}), path=path,
        )


def new_report_id(when: datetime, device: str, model: str) -> str:
    """``20261130-101500-line3-cam-defects``: sortable by time, readable in `bench list`."""
    return f"{when:%Y%m%d-%H%M%S}-{_slug(device, 24)}-{_slug(model)}"


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:limit].rstrip("-.") or "x"


def report_path(home: Any, report_id: str) -> Path:
    return Path(home.reports_dir) / f"bench-{report_id}.json"


def save_report(home: Any, report: BenchReport) -> Path:
    """Write the report (atomically) as ``reports/bench-<id>.json``; a clash gets a -2, -3 ... id."""
    directory = Path(home.reports_dir)
    directory.mkdir(parents=True, exist_ok=True)
    base, n = report.id, 1
    while report_path(home, report.id).exists():
        n += 1
        report.id = f"{base}-{n}"
    path = report_path(home, report.id)
    atomic_write_json(path, report.to_json())
    report.path = path
    return path


def _read_report(path: Path) -> BenchReport:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the report ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a fieldkit bench report")
    return BenchReport.from_json(doc, Path(path))


def list_reports(home: Any) -> list[BenchReport]:
    """Saved reports, oldest first (unreadable files are skipped)."""
    out = []
    for p in sorted(Path(home.reports_dir).glob("bench-*.json")):
        try:
            out.append(_read_report(p))
        except ConfigError:
            continue
    out.sort(key=lambda r: (r.created_at, r.id))
    return out


def load_report(home: Any, ref: str | Path) -> BenchReport:
    """A report by file path, by id, or by a unique beginning of an id."""
    p = Path(ref).expanduser()
    if p.is_file():
        return _read_report(p)
    text = str(ref)
    exact = report_path(home, text)
    if exact.is_file():
        return _read_report(exact)
    matches = sorted(Path(home.reports_dir).glob(f"bench-{glob_escape(text)}*.json"))
    if len(matches) == 1:
        return _read_report(matches[0])
    if not matches:
        raise ConfigError(f"no saved bench report {text!r} (not a file, not a report id)",
                          hint="`fieldkit bench list` shows the saved reports")
    ids = ", ".join(m.stem[len("bench-"):] for m in matches[:5]) + (" ..." if len(matches) > 5 else "")
    raise ConfigError(f"{text!r} matches {len(matches)} reports ({ids}); give more of the id")


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


@dataclass
class CompareRow:
    metric: str
    a: Any
    b: Any
    unit: str = ""
    delta_pct: float | None = None
    better: str | None = None  # "a" | "b" | None (equal, or not comparable)


def _get(doc: dict, path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _max_temp(doc: dict) -> float | None:
    temps = [z.get("max") for z in (doc.get("thermal") or {}).values() if z.get("max") is not None]
    return max(temps) if temps else None


# (label, getter, unit, lower_is_better: None when neither is better, e.g. text, thread count)
_COMPARE: list[tuple[str, Callable[[dict], Any], str, bool | None]] = [
    ("device", lambda d: d.get("device"), "", None),
    ("profile", lambda d: d.get("profile"), "", None),
    ("model", lambda d: _get(d, "model.name"), "", None),
    ("model sha256", lambda d: (_get(d, "model.sha256") or "")[:12] or None, "", None),
    ("model size", lambda d: _get(d, "model.size_bytes"), "bytes", True),
    ("threads", lambda d: _get(d, "settings.threads"), "", None),
    ("spin", lambda d: _get(d, "settings.spin"), "", None),
    ("rate", lambda d: _get(d, "settings.rate_hz"), "Hz", None),
    ("runs", lambda d: d.get("runs"), "", None),
    ("session create", lambda d: d.get("session_create_ms"), "ms", True),
    ("first run", lambda d: d.get("first_run_ms"), "ms", True),
    ("min", lambda d: _get(d, "latency_ms.min"), "ms", True),
    ("mean", lambda d: _get(d, "latency_ms.mean"), "ms", True),
    ("std", lambda d: _get(d, "latency_ms.std"), "ms", True),
    ("p50", lambda d: _get(d, "latency_ms.p50"), "ms", True),
    ("p90", lambda d: _get(d, "latency_ms.p90"), "ms", True),
    ("p95", lambda d: _get(d, "latency_ms.p95"), "ms", True),
    ("p99", lambda d: _get(d, "latency_ms.p99"), "ms", True),
    ("max", lambda d: _get(d, "latency_ms.max"), "ms", True),
    ("p90 early stopping", lambda d: d.get("p90_early_stopping_ms"), "ms", True),
    ("throughput", lambda d: d.get("throughput_ips"), "/s", False),
    ("CPU", lambda d: d.get("cpu_percent"), "%", True),
    ("peak RSS", lambda d: d.get("peak_rss_bytes"), "bytes", True),
    ("lowest free memory", lambda d: _get(d, "memory.available_min"), "bytes", False),
    ("max temperature", _max_temp, "°C", True),
    ("deadline misses", lambda d: d.get("deadline_misses"), "", True),
    ("verdict", lambda d: _get(d, "verdict.status"), "", None),
]


def compare(a: BenchReport | dict, b: BenchReport | dict) -> list[CompareRow]:
    """Side-by-side rows of two reports; ``delta_pct`` = (b - a) / a x 100 for numbers."""
    da = a.to_json() if isinstance(a, BenchReport) else a
    db = b.to_json() if isinstance(b, BenchReport) else b
    rows = []
    for label, get, unit, lower_better in _COMPARE:
        va, vb = get(da), get(db)
        row = CompareRow(label, va, vb, unit)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
        if numeric:
            if va:
                row.delta_pct = round(100.0 * (vb - va) / va, 2)
            if va != vb and lower_better is not None:
                row.better = ("a" if va < vb else "b") if lower_better else ("a" if va > vb else "b")
        rows.append(row)
    return rows
