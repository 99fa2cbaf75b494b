"""On-device inference benchmark with a go/no-go verdict (the service behind `fieldkit bench`).

The benchmark itself runs on the device, in a process of its own that the agent starts
(:mod:`fieldkit.agent.benchrun`); this module prepares the model there, drives the run, and judges
the measurement against the device profile and a use case's latency budget::

    report = run_bench("line3-cam", "model.onnx", BenchSettings(threads=2),
                       use_case="vision-reject", progress=print, cancel=threading.Event())
    report.verdict.status        # "pass" | "warn" | "fail"
    save_report(home, report)    # FIELDKIT_HOME/reports/bench-<id>.json

MODEL is a local ``.onnx`` file, a local model directory (``release.json`` + ``.onnx``), or
``installed:NAME[@VERSION]`` for a model already installed on the device. Local files go to a
content-addressed bench cache on the device (``<models dir>/../bench-cache/<sha256>.onnx``), where
a later run finds them again instead of uploading.

Latency statistics follow :mod:`fieldkit.agent.stats`: percentiles by the nearest-rank rule
(the value at rank ceil(q x n) of the sorted runs, always a measured run), std is the population
standard deviation, and ``p90_early_stopping_ms`` is MLPerf LoadGen's SingleStream early-stopping
estimate, which needs at least 64 runs (``valid``; 662 for the p99 estimate).

Verdict rules (:func:`verdict`), each a :class:`Check`; any ``fail`` fails the run, else any
``warn`` warns:

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
import os
import posixpath
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fieldkit.errors import Cancelled, ConfigError, DeviceError

ProgressFn = Callable[[dict], None]

DEFAULT_WARMUP = 10
DEFAULT_DURATION_S = 20.0
SUSTAINED_S = 600.0  # MLPerf's minimum run duration
DEFAULT_METRIC = "p99"
MARGIN = 0.9  # within budget but above this fraction of it: warn
REPORT_KIND = "fieldkit.bench"
REPORT_SCHEMA = 1
INSTALLED_PREFIX = "installed:"
MIB = 1024 * 1024

# Keys of the device's measurement that the JSON report carries at its top level.
RESULT_KEYS = (
    "session_create_ms", "first_run_ms", "warmup_runs", "runs", "duration_s", "stop_reason",
    "latency_ms", "p90_early_stopping_ms", "p99_early_stopping_ms", "valid", "early_stopping_min_runs",
    "throughput_ips", "cpu_percent", "peak_rss_bytes", "memory", "thermal", "cpufreq", "throttle",
    "rate_hz", "deadline_misses", "late_runs", "latencies_ms", "inputs", "providers", "onnxruntime",
)

_HINTS = {
    "shape_mismatch": "--shape can only fill the model's symbolic dimensions (shown by name, e.g. N); "
                      "the fixed ones must match",
    "invalid_model": "compare the file's sha256 with the one the model was released with; re-export or re-copy it",
    "busy": "only one benchmark runs on a device at a time",
    "model_not_installed": "`installed:NAME` names a model directory under the profile's models path",
    "bench_crashed": "run `fieldkit health` on the device and check its free memory",
}


# --------------------------------------------------------------------------------------------------
# Settings and model specs

@dataclass
class BenchSettings:
    """How to run the benchmark (the CLI options; the TUI's form)."""

    warmup: int = DEFAULT_WARMUP
    """Untimed warm-up runs (the first is reported as first_run_ms; at least one always runs)."""
    runs: int | None = None
    """Stop after this many timed runs (instead of a duration)."""
    duration_s: float | None = None
    """Run for this long (default 20 s; 600 s for a sustained run) and at least ``min_runs`` runs."""
    min_runs: int = 64
    """With a duration: keep going until this many runs (64: MLPerf's minimum for p90)."""
    max_seconds: float | None = None
    """Hard limit on the timed loop (default: 3 x duration + 60 s; 120 s with ``runs``)."""
    threads: int = 0
    """onnxruntime intra-op threads; 0 lets onnxruntime choose (one per physical core)."""
    rate_hz: float | None = None
    """Pace runs at this rate and count missed deadlines (TFLite ``run_frequency``)."""
    shapes: dict[str, list[int]] = field(default_factory=dict)
    """Concrete shapes for inputs with symbolic dimensions, e.g. {"input": [1, 3, 224, 224]}."""
    inputs: Path | None = None
    """A local .npz file of input arrays by input name (uploaded with the model)."""
    seed: int = 0
    """Seed of the random inputs when no ``inputs`` file is given."""
    spin: str = "on"
    """Let intra-op threads spin between runs ("on", onnxruntime's default) or not ("off")."""
    providers: list[str] = field(default_factory=list)
    """Execution providers in priority order (default CPUExecutionProvider)."""
    progress_interval_s: float = 0.5
    """Seconds between progress events from the device."""
    sustained: bool = False
    """A sustained run: ``duration_s`` defaults to 600 s (MLPerf's minimum)."""

    def validate(self) -> "BenchSettings":
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"bench: {msg}")

        if self.warmup < 0:
            raise bad(f"--warmup must not be negative, got {self.warmup}")
        if self.runs is not None and self.runs < 1:
            raise bad(f"--runs must be at least 1, got {self.runs}")
        if self.runs is not None and (self.duration_s is not None or self.sustained):
            raise bad("give either --runs or --duration/--sustained, not both")
        for name, value in (("--duration", self.duration_s), ("--max-seconds", self.max_seconds),
                            ("--rate", self.rate_hz), ("progress interval", self.progress_interval_s)):
            if value is not None and not (value > 0 and value != float("inf")):
                raise bad(f"{name} must be a positive number, got {value:g}")
        if self.min_runs < 1:
            raise bad(f"--min-runs must be at least 1, got {self.min_runs}")
        if self.threads < 0:
            raise bad(f"--threads must not be negative, got {self.threads}")
        if self.spin not in ("on", "off"):
            raise bad(f"--spin must be on or off, got {self.spin!r}")
        for name, dims in self.shapes.items():
            if not name or not dims or any(int(d) < 1 for d in dims):
                raise bad(f"--shape {name}: dimensions must be positive whole numbers")
        if self.inputs is not None and not Path(self.inputs).is_file():
            raise bad(f"inputs file {self.inputs} not found")
        return self

    @property
    def effective_duration_s(self) -> float | None:
        if self.runs is not None:
            return None
        if self.duration_s is not None:
            return self.duration_s
        return SUSTAINED_S if self.sustained else DEFAULT_DURATION_S

    @property
    def time_limit_s(self) -> float:
        """Upper bound of the timed loop on the device (benchrun's own rule when not given)."""
        if self.max_seconds is not None:
            return self.max_seconds
        return 3 * (self.effective_duration_s or DEFAULT_DURATION_S) + 60

    def agent_args(self) -> dict:
        """Arguments of the agent's ``bench`` operation (model and inputs are added by the caller)."""
        return {
            "warmup": self.warmup,
            "runs": self.runs,
            "duration_s": self.effective_duration_s,
            "min_runs": None if self.runs is not None else self.min_runs,
            "max_seconds": self.max_seconds,
            "threads": self.threads,
            "rate_hz": self.rate_hz,
            "shapes": {k: [int(d) for d in v] for k, v in self.shapes.items()},
            "seed": self.seed,
            "spin": self.spin,
            "providers": list(self.providers),
            "progress_interval_s": self.progress_interval_s,
        }


def parse_shape(text: str) -> tuple[str, list[int]]:
    """``input=1x3x224x224`` -> ("input", [1, 3, 224, 224]); ConfigError otherwise."""
    name, sep, dims = text.rpartition("=")
    try:
        values = [int(d) for d in dims.replace(",", "x").split("x")] if sep and name else []
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--shape {text}: write NAME=DIMS with positive whole numbers, e.g. input=1x3x224x224")
    return name, values


@dataclass(frozen=True)
class ModelSpec:
    """What MODEL named: a local file, a local model directory, or a model installed on the device."""

    kind: str  # "file" | "dir" | "installed"
    text: str
    file: Path | None = None  # the local .onnx (file and dir)
    directory: Path | None = None  # dir
    name: str = ""
    version: str | None = None  # installed@VERSION, or release.json's version for a dir
    release: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "installed":
            return f"{self.name}@{self.version}" if self.version else self.name
        return self.name


def _read_release(directory: Path) -> dict:
    path = directory / "release.json"
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return doc


def parse_model_spec(text: str) -> ModelSpec:
    """Parse MODEL; local files and directories must exist (ConfigError otherwise)."""
    if text.startswith(INSTALLED_PREFIX):
        rest = text[len(INSTALLED_PREFIX):]
        name, _, version = rest.partition("@")
        for part, label in ((name, "name"), (version, "version")):
            if (part or label == "name") and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", part):
                raise ConfigError(f"{text}: invalid model {label} {part!r}; write installed:NAME or installed:NAME@VERSION")
        return ModelSpec("installed", text, name=name, version=version or None)
    path = Path(text).expanduser()
    if path.is_dir():
        release = _read_release(path)
        model_file = release.get("model_file")
        if model_file:
            onnx = path / str(model_file)
            if not onnx.is_file():
                raise ConfigError(f"{path}/release.json names model_file {model_file}, which is not in {path}")
        else:
            found = sorted(p for p in path.glob("*.onnx") if p.is_file())
            if len(found) != 1:
                listed = f" ({', '.join(p.name for p in found)})" if found else ""
                raise ConfigError(f"{path} holds {len(found) or 'no'} .onnx files{listed}; "
                                  "name one as model_file in release.json, or give the .onnx file itself")
            onnx = found[0]
        return ModelSpec("dir", text, file=onnx.resolve(), directory=path.resolve(),
                         name=str(release.get("name") or path.resolve().name),
                         version=str(release["version"]) if release.get("version") else None, release=release)
    if path.is_file():
        return ModelSpec("file", text, file=path.resolve(), name=path.stem)
    hint = "for a model already on the device write installed:NAME" if "/" not in text and not text.endswith(".onnx") else None
    raise ConfigError(f"model {text}: no such file or directory", hint=hint)


def bench_cache_dir(profile: Any) -> str:
    """The device's content-addressed bench cache: next to the models directory."""
    models = str(getattr(getattr(profile, "paths", None), "models", "/var/lib/fieldkit/models")).rstrip("/")
    return posixpath.join(posixpath.dirname(models) or "/", "bench-cache")


# --------------------------------------------------------------------------------------------------
# Verdict

@dataclass
class Check:
    name: str
    status: str  # pass | warn | fail | n/a
    message: str
    value: Any = None
    limit: Any = None


@dataclass
class Verdict:
    status: str  # pass | warn | fail
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"status": self.status, "reasons": list(self.reasons), "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_json(cls, doc: dict) -> "Verdict":
        return cls(doc.get("status", "warn"), list(doc.get("reasons") or []),
                   [Check(**c) for c in doc.get("checks") or []])


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

    status = "fail" if any(c.status == "fail" for c in checks) else (
        "warn" if any(c.status == "warn" for c in checks) else "pass")
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
    write_json_atomic(path, report.to_json())
    report.path = path
    return path


def write_json_atomic(path: Path, doc: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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


# --------------------------------------------------------------------------------------------------
# Running

def _emit(progress: ProgressFn | None, **data: Any) -> None:
    if progress is not None:
        try:
            progress(data)
        except Exception:
            pass  # a broken display must not break the measurement


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"benchmark cancelled {what}; nothing was started on the device")


def _push_cached(link: Any, local: Path, suffix: str, cache: str, *, what: str, progress: ProgressFn | None,
                 cancel: threading.Event | None) -> dict:
    """Upload ``local`` to ``cache/<sha256><suffix>`` unless it is already there (resuming a partial copy)."""
    from fieldkit.link.client import file_sha256

    sha = file_sha256(local)
    size = local.stat().st_size
    dest = posixpath.join(cache, sha + suffix)
    st = link.call("stat", {"path": dest}, cancel=cancel)
    if st.get("exists") and st.get("size") == size:
        return {"device_path": dest, "sha256": sha, "size_bytes": size, "uploaded": False}
    partial = int(st.get("partial_size") or 0)
    offset = partial if 0 < partial < size else 0
    _emit(progress, phase="upload", what=what, bytes_done=offset, bytes_total=size,
          message=f"uploading {local.name} to the bench cache" + (f" (resuming at {offset} bytes)" if offset else ""))

    def on_bytes(done: int, total: int) -> None:
        _emit(progress, phase="upload", what=what, bytes_done=done, bytes_total=total,
              message=f"uploading {local.name}")

    timeout = max(120.0, size / (256 * 1024))  # a slow serial line still finishes
    link.upload(local, dest, size=size, sha256=sha, offset=offset, progress=on_bytes, cancel=cancel, timeout=timeout)
    return {"device_path": dest, "sha256": sha, "size_bytes": size, "uploaded": True}


def _prepare_model(link: Any, spec: ModelSpec, profile: Any, cache: str, progress: ProgressFn | None,
                   cancel: threading.Event | None) -> dict:
    if spec.kind == "installed":
        _emit(progress, phase="resolve", message=f"finding installed model {spec.label} on the device")
        try:
            found = link.call("bench_model", {"models_dir": profile.paths.models, "name": spec.name,
                                              "version": spec.version}, cancel=cancel)
        except DeviceError as exc:
            raise DeviceError(f"{link.name}: {_device_message(exc)}", code=exc.code, hint=_HINTS.get(exc.code)) from None
        return {"name": spec.name, "version": found.get("version"), "source": "installed",
                "path": found["path"], "device_path": found["path"], "sha256": None,
                "size_bytes": found.get("size"), "uploaded": None, "release": found.get("release") or {}}
    assert spec.file is not None
    pushed = _push_cached(link, spec.file, ".onnx", cache, what="model", progress=progress, cancel=cancel)
    model = {"name": spec.name, "version": spec.version, "source": spec.kind, "path": str(spec.file)}
    model.update(pushed)
    if spec.kind == "dir":
        model["directory"] = str(spec.directory)
        model["release"] = {k: spec.release[k] for k in ("name", "version", "description", "model_file")
                            if k in spec.release}
    return model


def _device_message(exc: DeviceError, model: dict | None = None) -> str:
    """The agent's own words, without the link's "NAME: op failed:" prefix; a cached copy's
    content-addressed name is replaced by the file name the technician gave."""
    text = re.sub(r"^.*?: [a-z_]+ failed: ", "", exc.message, count=1)
    if model and model.get("source") in ("file", "dir") and model.get("sha256"):
        local = Path(str(model.get("path"))).name
        text = re.sub(r"[^\s(]*" + re.escape(posixpath.basename(model["device_path"])), local, text)
    return text


def _progress_relay(progress: ProgressFn | None, settings: BenchSettings, started: dict) -> ProgressFn:
    duration = settings.effective_duration_s

    def on_event(ev: dict) -> None:
        kind = ev.get("event")
        if kind == "started":
            started.update(ev)
            _emit(progress, phase="started", message="benchmark process started on the device", pid=ev.get("pid"),
                  inputs=ev.get("inputs"), providers=ev.get("providers"), onnxruntime=ev.get("onnxruntime"),
                  session_create_ms=ev.get("session_create_ms"), model=ev.get("model"))
            return
        if kind != "progress":
            return
        data = {k: v for k, v in ev.items() if k != "event"}
        phase = data.get("phase")
        elapsed, eta = data.get("elapsed_s"), data.get("eta_s")
        if phase == "warmup":
            total = max(1, settings.warmup)
            data["runs_target"] = total
            data["fraction"] = min(1.0, (data.get("runs") or 0) / total)
        else:
            data["runs_target"] = settings.runs
            data["duration_s"] = duration
            if elapsed is not None and eta is not None and elapsed + eta > 0:
                data["fraction"] = min(1.0, elapsed / (elapsed + eta))
            else:
                data["fraction"] = None
        _emit(progress, **data)

    return on_event


def run_bench(link_or_dev: Any, model_spec: ModelSpec | str | Path, settings: BenchSettings | None = None, *,
              profile: Any = None, use_case: str | None = None, budget_ms: float | None = None,
              progress: ProgressFn | None = None, cancel: threading.Event | None = None,
              home: Any = None, connect_timeout: float = 15.0) -> BenchReport:
    """Benchmark ``model_spec`` on a device and judge it.

    ``link_or_dev`` is a connected :class:`~fieldkit.link.client.DeviceLink` (left open), or an
    inventory name / target string / ``ResolvedDevice`` (connected here and closed afterwards).
    ``profile`` is a Profile or profile name (default: the device's, else generic-linux).
    ``progress`` receives dicts with a ``phase``: connect, resolve, upload (bytes_done,
    bytes_total), started, warmup / run (runs, runs_target, elapsed_s, eta_s, fraction, p50_ms,
    p90_ms, p99_ms, last_ms, temp_c). It is called from the link's reader thread: keep it quick.
    Setting ``cancel`` stops the run on the device (its process group is ended) and raises
    :class:`~fieldkit.errors.Cancelled`. Device failures raise DeviceError with the device's code.
    """
    from fieldkit.link.client import DeviceLink
    from fieldkit.locations import Home
    from fieldkit.profiles import DEFAULT_PROFILE, Profile, get_profile

    settings = (settings or BenchSettings()).validate()
    spec = model_spec if isinstance(model_spec, ModelSpec) else parse_model_spec(str(model_spec))
    home = home or Home.current()
    if budget_ms is not None and not budget_ms > 0:
        raise ConfigError(f"--budget-ms must be a positive number of milliseconds, got {budget_ms:g}")

    dev = None
    if isinstance(link_or_dev, DeviceLink):
        link, own = link_or_dev, False
        prof = profile if isinstance(profile, Profile) else get_profile(profile or DEFAULT_PROFILE, home)
        device, target = link.name, link.name
    else:
        from fieldkit.link.connect import ResolvedDevice, resolve

        if isinstance(link_or_dev, ResolvedDevice):
            dev = link_or_dev
        else:
            dev = resolve(str(link_or_dev), home, profile if isinstance(profile, str) else None)
        prof = profile if isinstance(profile, Profile) else dev.profile
        device, target = dev.name, dev.target
        link, own = None, True
    uc = prof.use_case(use_case) if use_case else None  # ConfigError listing the use cases, before connecting
    metric = uc.metric if uc else DEFAULT_METRIC
    budget = budget_ms if budget_ms is not None else (uc.budget_ms if uc else None)

    _check_cancel(cancel, "before connecting")
    if link is None:
        from fieldkit.link.connect import connect

        _emit(progress, phase="connect", message=f"connecting to {device}")
        link = connect(dev, home, timeout=connect_timeout)
    try:
        if "bench" not in (link.agent.get("ops") or []):
            raise DeviceError(f"{device}: the agent there (version {link.agent.get('agent_version')}) cannot run "
                              "benchmarks", code="unsupported",
                              hint="update the agent on the device (over SSH fieldkit pushes the current one)")
        journal = getattr(link, "journal", None)
        if journal is None:
            from fieldkit.link.connect import journal_for

            journal = journal_for(home)
        with journal.operation(device, "bench.run", {"model": spec.label, "use_case": use_case,
                                                     "budget_ms": budget, "settings": settings.agent_args()}) as op:
            report = _run(link, spec, settings, prof, device, target, use_case, uc, metric, budget, progress, cancel)
            lat = report.result.get("latency_ms") or {}
            op.details.update(report_id=report.id, model_sha256=report.model.get("sha256"),
                              verdict=report.verdict.status, reasons=report.verdict.reasons,
                              runs=report.result.get("runs"), p50_ms=lat.get("p50"), p99_ms=lat.get("p99"))
        return report
    finally:
        if own:
            link.close()


def _run(link: Any, spec: ModelSpec, settings: BenchSettings, prof: Any, device: str, target: str,
         use_case: str | None, uc: Any, metric: str, budget: float | None, progress: ProgressFn | None,
         cancel: threading.Event | None) -> BenchReport:
    cache = bench_cache_dir(prof)
    model = _prepare_model(link, spec, prof, cache, progress, cancel)
    inputs = None
    if settings.inputs is not None:
        inputs = _push_cached(link, Path(settings.inputs).resolve(), ".npz", cache, what="inputs",
                              progress=progress, cancel=cancel)
    args = settings.agent_args()
    args.update({"model": model["device_path"], "expect_sha256": model.get("sha256"),
                 "lock": posixpath.join(cache, ".lock"), "inputs": inputs["device_path"] if inputs else None})
    timeout = settings.time_limit_s + 600.0  # session creation and warm-up are not in the time limit
    started: dict = {}
    _check_cancel(cancel, "before the benchmark started")
    _emit(progress, phase="starting", message="starting the benchmark process on the device")
    for attempt in (1, 2):
        try:
            result = link.call("bench", args, timeout=timeout, on_event=_progress_relay(progress, settings, started),
                               cancel=cancel)
            break
        except Cancelled as exc:
            detail = str(exc).split(" cancelled: ", 1)[1] if " cancelled: " in str(exc) else ""
            if not detail:
                detail = ("the link closed before the device confirmed; the agent ends the benchmark process "
                          "when its session ends")
            raise Cancelled(f"benchmark on {device} cancelled: {detail}") from None
        except DeviceError as exc:
            if exc.code == "digest_mismatch" and model.get("uploaded") is False and attempt == 1:
                # the cached copy on the device is damaged: replace it and run once more
                link.call("remove", {"path": model["device_path"]})
                assert spec.file is not None
                model.update(_push_cached(link, spec.file, ".onnx", cache, what="model", progress=progress,
                                          cancel=cancel))
                model["recached"] = True
                continue
            raise DeviceError(f"{device}: the benchmark failed: {_device_message(exc, model)}", code=exc.code,
                              hint=_HINTS.get(exc.code)) from None
    ran = dict(result.pop("started", None) or {})
    dev_model = result.get("model") or {}
    model["sha256"] = model.get("sha256") or dev_model.get("sha256")
    model["size_bytes"] = model.get("size_bytes") or dev_model.get("size_bytes")
    ran_settings = ran.get("settings") or {}
    result_settings = result.get("settings") or {}
    full_settings = {
        "warmup": max(1, settings.warmup),
        "runs": settings.runs,
        "duration_s": settings.effective_duration_s,
        "sustained": settings.sustained,
        "min_runs": None if settings.runs is not None else settings.min_runs,
        "max_seconds": ran_settings.get("max_seconds", settings.max_seconds),
        "threads": settings.threads,
        "spin": settings.spin,
        "providers": list(settings.providers) or ["CPUExecutionProvider"],
        "providers_active": result_settings.get("providers") or ran.get("providers"),
        "rate_hz": settings.rate_hz,
        "shapes": {k: list(v) for k, v in settings.shapes.items()},
        "inputs": str(Path(settings.inputs).resolve()) if settings.inputs else f"random(seed={settings.seed})",
        "inputs_sha256": inputs["sha256"] if inputs else None,
        "inputs_uploaded": inputs["uploaded"] if inputs else None,
        "seed": settings.seed,
        "graph_optimization": ran_settings.get("graph_optimization", "all"),
    }
    result["inputs"] = ran.get("inputs")
    result["providers"] = ran.get("providers")
    result.setdefault("onnxruntime", ran.get("onnxruntime"))
    agent = {"version": link.agent.get("agent_version"), "python": ran.get("python") or link.agent.get("python"),
             "machine": ran.get("machine"), "onnxruntime": result.get("onnxruntime"), "pid": ran.get("pid")}
    now = datetime.now(timezone.utc)
    report = BenchReport(
        id=f"{now:%Y%m%d-%H%M%S}-{_slug(device, 24)}-{_slug(spec.label)}",
        created_at=now.isoformat(timespec="seconds"),
        device=device, target=target, transport=getattr(link, "transport", ""), profile=prof.name,
        use_case=use_case, budget_ms=budget, metric=metric, model=model, settings=full_settings,
        result=result, verdict=Verdict("warn", []), agent=agent)
    report.verdict = verdict(report.to_json(), prof, use_case=use_case, budget_ms=budget, metric=metric)
    _emit(progress, phase="done", message=f"verdict: {report.verdict.status}", status=report.verdict.status)
    return report


__all__ = [
    "BenchReport", "BenchSettings", "Check", "CompareRow", "ModelSpec", "Verdict", "bench_cache_dir", "compare",
    "fmt_ms", "list_reports", "load_report", "parse_model_spec", "parse_shape", "run_bench", "save_report",
    "verdict",
]
