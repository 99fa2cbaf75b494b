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

"""

from __future__ import annotations

import json
import posixpath
import re
import threading
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator,
)

from fieldkit.benchreport import DEFAULT_METRIC, BenchReport, Verdict, new_report_id, verdict
from fieldkit.errors import Cancelled, ConfigError, DeviceError
from fieldkit.textfmt import TransferMeter

ProgressFn = Callable[[dict], None]

DEFAULT_WARMUP = 10
DEFAULT_DURATION_S = 20.0
SUSTAINED_S = 600.0  # MLPerf's minimum run duration
INSTALLED_PREFIX = "installed:"


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

def _settings_error(exc: ValidationError) -> ConfigError:
    """A technician-readable message that names the setting (not a CLI flag: the TUI shows it too)."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err.get("loc") or ())
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        msg = msg[:1].lower() + msg[1:]
        got = err.get("input")
        if isinstance(got, (int, float, str)) and not isinstance(got, bool) and str(got) not in msg:
            msg += f", got {got!r}"
        parts.append(f"{where}: {msg}" if where else msg)
    return ConfigError("bench settings: " + "; ".join(parts))


def _positive(value: float | None) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive number")
    return value


PositiveSeconds = Annotated[float | None, AfterValidator(_positive)]


class BenchSettings(BaseModel):
    """How to run the benchmark: declared once, filled by the CLI's options and the TUI's form,
    and sent to the device as JSON (:meth:`agent_args`). Invalid values raise ConfigError naming
    the setting."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    warmup: int = Field(DEFAULT_WARMUP, ge=0)
    """Untimed warm-up runs (the first is reported as first_run_ms; at least one always runs)."""
    runs: int | None = Field(None, ge=1)
    """Stop after this many timed runs (instead of a duration)."""
    duration_s: PositiveSeconds = None
    """Run for this long (default 20 s; 600 s for a sustained run) and at least ``min_runs`` runs."""
    min_runs: int = Field(64, ge=1)
    """With a duration: keep going until this many runs (64: MLPerf's minimum for p90)."""
    max_seconds: PositiveSeconds = None
    """Hard limit on the timed loop (default: 3 x duration + 60 s; 120 s with ``runs``)."""
    threads: int = Field(0, ge=0, le=1024)
    """onnxruntime intra-op threads; 0 lets onnxruntime choose (one per physical core)."""
    rate_hz: PositiveSeconds = None
    """Pace runs at this rate and count missed deadlines (TFLite ``run_frequency``)."""
    shapes: dict[str, list[Annotated[int, Field(ge=1)]]] = Field(default_factory=dict)
    """Concrete shapes for inputs with symbolic dimensions, e.g. {"input": [1, 3, 224, 224]}."""
    inputs: Path | None = None
    """A local .npz file of input arrays by input name (uploaded with the model)."""
    seed: int = 0
    """Seed of the random inputs when no ``inputs`` file is given."""
    spin: Literal["on", "off"] = "on"
    """Let intra-op threads spin between runs ("on", onnxruntime's default) or not ("off")."""
    providers: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list)
    """Execution providers in priority order (default CPUExecutionProvider)."""
    progress_interval_s: PositiveSeconds = 0.5
    """Seconds between progress events from the device."""
    sustained: bool = False
    """A sustained run: ``duration_s`` defaults to 600 s (MLPerf's minimum)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _settings_error(exc) from None

    @field_validator("shapes")
    @classmethod
    def _shapes_named(cls, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, dims in shapes.items():
            if not name or not dims:
                raise ValueError(f"the shape of input {name!r} needs a name and at least one dimension")
        return shapes

    @field_validator("inputs")
    @classmethod
    def _inputs_exist(cls, path: Path | None) -> Path | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"inputs file {path} not found")
        return path

    @model_validator(mode="after")
    def _one_stop_rule(self) -> "BenchSettings":
        if self.runs is not None and (self.duration_s is not None or self.sustained):
            raise ValueError("give either runs or a duration (duration_s, sustained), not both")
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
        model_file = release.get("model") or release.get("model_file")  # model_file: before releases
        if model_file:
            onnx = path / str(model_file)
            if not onnx.is_file():
                raise ConfigError(f"{path}/release.json names model {model_file}, which is not in {path}")
        else:
            found = sorted(p for p in path.glob("*.onnx") if p.is_file())
            if len(found) != 1:
                listed = f" ({', '.join(p.name for p in found)})" if found else ""
                raise ConfigError(f"{path} holds {len(found) or 'no'} .onnx files{listed}; "
                                  "name one as model in release.json, or give the .onnx file itself")
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
    if st.exists and st.size == size:
        return {"device_path": dest, "sha256": sha, "size_bytes": size, "uploaded": False}
    partial = st.partial_size or 0
    offset = partial if 0 < partial < size else 0
    meter = TransferMeter(size, offset)  # rate over the last seconds, ETA from it
    _emit(progress, phase="upload", what=what, **meter.fields(),
          message=f"uploading {local.name} to the bench cache" + (f" (resuming at {offset} bytes)" if offset else ""))

    def on_bytes(done: int, total: int) -> None:
        if meter.update(done):
            _emit(progress, phase="upload", what=what, **meter.fields(), message=f"uploading {local.name}")

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
        return {"name": spec.name, "version": found.version, "source": "installed",
                "path": found.path, "device_path": found.path, "sha256": None,
                "size_bytes": found.size, "uploaded": None, "release": dict(found.release or {})}
    assert spec.file is not None
    pushed = _push_cached(link, spec.file, ".onnx", cache, what="model", progress=progress, cancel=cancel)
    model = {"name": spec.name, "version": spec.version, "source": spec.kind, "path": str(spec.file)}
    model.update(pushed)
    if spec.kind == "dir":
        model["directory"] = str(spec.directory)
        model["release"] = {k: spec.release[k] for k in ("name", "version", "description", "model", "model_file")
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

    def on_event(event: Any) -> None:
        ev = event.model_dump() if hasattr(event, "model_dump") else dict(event)
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


def run_bench(session_or_dev: Any, model_spec: ModelSpec | str | Path, settings: BenchSettings | None = None, *,
              profile: Any = None, use_case: str | None = None, budget_ms: float | None = None,
              progress: ProgressFn | None = None, cancel: threading.Event | None = None,
              home: Any = None, connect_timeout: float = 15.0) -> BenchReport:
    """Benchmark ``model_spec`` on a device and judge it; the run is recorded in the session's journal.

    ``session_or_dev`` is an open :class:`~fieldkit.devices.DeviceSession` (left open), or an
    inventory name / target string / ``ResolvedDevice`` (a session is opened here and closed
    afterwards). ``profile`` is a Profile or profile name (default: the device's).
    ``progress`` receives dicts with a ``phase``: connect, resolve, upload (bytes_done,
    bytes_total), started, warmup / run (runs, runs_target, elapsed_s, eta_s, fraction, p50_ms,
    p90_ms, p99_ms, last_ms, temp_c). It is called from the link's reader thread: keep it quick.
    Setting ``cancel`` stops the run on the device (its process group is ended) and raises
    :class:`~fieldkit.errors.Cancelled`. Device failures raise DeviceError with the device's code.
    """
    from fieldkit.devices import DeviceSession, ResolvedDevice, open_session, resolve
    from fieldkit.locations import Home
    from fieldkit.profiles import Profile, get_profile

    settings = settings or BenchSettings()
    spec = model_spec if isinstance(model_spec, ModelSpec) else parse_model_spec(str(model_spec))
    home = home or Home.current()
    if budget_ms is not None and not budget_ms > 0:
        raise ConfigError(f"the latency budget must be a positive number of milliseconds, got {budget_ms:g}")

    if isinstance(session_or_dev, DeviceSession):
        session, own = session_or_dev, False
        dev = session.device
    else:
        session, own = None, True
        dev = session_or_dev if isinstance(session_or_dev, ResolvedDevice) else resolve(
            str(session_or_dev), home, profile if isinstance(profile, str) else None)
    prof = profile if isinstance(profile, Profile) else (get_profile(profile, home) if profile else dev.profile)
    uc = prof.use_case(use_case) if use_case else None  # ConfigError listing the use cases, before connecting
    metric = uc.metric if uc else DEFAULT_METRIC
    budget = budget_ms if budget_ms is not None else (uc.budget_ms if uc else None)

    _check_cancel(cancel, "before connecting")
    if session is None:
        _emit(progress, phase="connect", message=f"connecting to {dev.name}")
        session = open_session(dev, home, timeout=connect_timeout)
    try:
        if not session.supports("bench"):
            raise DeviceError(f"{dev.name}: the agent there (version {session.hello.agent_version}) cannot run "
                              "benchmarks", code="unsupported",
                              hint="update the agent on the device (over SSH fieldkit pushes the current one)")
        with session.operation("bench.run", {"model": spec.label, "use_case": use_case,
                                             "budget_ms": budget, "settings": settings.agent_args()}) as op:
            report = _run(session, spec, settings, prof, use_case, uc, metric, budget, progress, cancel)
            lat = report.result.get("latency_ms") or {}
            op.details.update(report_id=report.id, model_sha256=report.model.get("sha256"),
                              verdict=report.verdict.status, reasons=report.verdict.reasons,
                              runs=report.result.get("runs"), p50_ms=lat.get("p50"), p99_ms=lat.get("p99"))
        return report
    finally:
        if own:
            session.close()


def _run(session: Any, spec: ModelSpec, settings: BenchSettings, prof: Any, use_case: str | None, uc: Any,
         metric: str, budget: float | None, progress: ProgressFn | None, cancel: threading.Event | None) -> BenchReport:
    link = session
    device, target = session.name, session.target
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
            result = session.call("bench", args, timeout=timeout, cancel=cancel,
                                  on_event=_progress_relay(progress, settings, started)).model_dump()
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
    agent = {"version": session.hello.agent_version, "python": ran.get("python") or session.hello.python,
             "machine": ran.get("machine"), "onnxruntime": result.get("onnxruntime"), "pid": ran.get("pid")}
    now = datetime.now(timezone.utc)
    report = BenchReport(
        id=new_report_id(now, device, spec.label),
        created_at=now.isoformat(timespec="seconds"),
        device=device, target=target, transport=session.transport, profile=prof.name,
        use_case=use_case, budget_ms=budget, metric=metric, model=model, settings=full_settings,
        result=result, verdict=Verdict("warn", []), agent=agent)
    report.verdict = verdict(report.to_json(), prof, use_case=use_case, budget_ms=budget, metric=metric)
    _emit(progress, phase="done", message=f"verdict: {report.verdict.status}", status=report.verdict.status)
    return report


