"""Models of the benchmark operations: finding an installed model, the run's events and result."""

from typing import Annotated, Any

from pydantic import Field

from fieldkit.wire.types import (
    MAX_ITEMS, MAX_ZONES, Count, Dim, Flags, Int, Name, Number, Sha256, Text,
    WireModel,
)

__all__ = [
    "ReleaseInfo",
    "BenchModelResult",
    "ModelFacts",
    "InputSpec",
    "OutputSpec",
    "RunSettings",
    "BenchStarted",
    "BenchProgress",
    "BenchEvent",
    "LatencySummary",
    "LatencyHistogram",
    "EarlyStoppingRuns",
    "BenchMemory",
    "ThermalSpan",
    "BenchCpuFreq",
    "BenchThrottle",
    "ResultSettings",
    "BenchResult",
]

# ---- benchmark ------------------------------------------------------------------------------------


class ReleaseInfo(WireModel):
    name: Name | None = None
    version: Name | None = None
    description: Text | None = None
    model: Name | None = None
    """The model file's name (older releases call it ``model_file``)."""
    model_file: Name | None = None
    inputs: Any = None


class BenchModelResult(WireModel):
    """``bench_model``: where an installed model's .onnx file is."""

    name: Name | None = None
    version: Name | None = None
    dir: Text | None = None
    path: Text
    size: Count | None = None
    release: ReleaseInfo = Field(default_factory=ReleaseInfo)


class ModelFacts(WireModel):
    path: Text | None = None
    sha256: Sha256 | None = None
    size_bytes: Count | None = None


class InputSpec(WireModel):
    name: Name | None = None
    shape: Annotated[list[Count], Field(max_length=64)] = []
    dtype: Name | None = None
    model_shape: Annotated[list[Dim], Field(max_length=64)] = []


class OutputSpec(WireModel):
    name: Name | None = None
    shape: Annotated[list[Dim], Field(max_length=64)] = []
    type: Name | None = None


class RunSettings(WireModel):
    """The settings the benchmark process ran with (its ``started`` line)."""

    warmup: Count | None = None
    runs: Count | None = None
    duration_s: Number | None = None
    min_runs: Count | None = None
    max_seconds: Number | None = None
    threads: Int | None = None
    spin: Name | None = None
    providers: Annotated[list[Name], Field(max_length=64)] = []
    rate_hz: Number | None = None
    inputs: Text | None = None
    graph_optimization: Name | None = None
    progress_interval_s: Number | None = None


class BenchStarted(WireModel):
    """The ``started`` event (also kept in the result as ``started``, without model)."""

    event: Name | None = None
    pid: Int | None = None
    model: ModelFacts | None = None
    inputs: Annotated[list[InputSpec], Field(max_length=MAX_ZONES)] = []
    outputs: Annotated[list[OutputSpec], Field(max_length=MAX_ZONES)] = []
    settings: RunSettings | None = None
    session_create_ms: Number | None = None
    onnxruntime: Name | None = None
    providers: Annotated[list[Name], Field(max_length=64)] = []
    python: Name | None = None
    machine: Name | None = None


class BenchProgress(WireModel):
    """A ``progress`` event: phase warmup or run."""

    event: Name | None = None
    phase: Name | None = None
    runs: Count | None = None
    elapsed_s: Number | None = None
    eta_s: Number | None = None
    p50_ms: Number | None = None
    p90_ms: Number | None = None
    p99_ms: Number | None = None
    last_ms: Number | None = None
    temp_c: Number | None = None


class BenchEvent(WireModel):
    """An event of a kind this fieldkit does not know (a newer agent): passed on untouched."""

    event: Name | None = None


class LatencySummary(WireModel):
    """Milliseconds; all None when no run was timed."""

    n: Count | None = None
    min: Number | None = None
    mean: Number | None = None
    std: Number | None = None
    p50: Number | None = None
    p90: Number | None = None
    p95: Number | None = None
    p99: Number | None = None
    p999: Number | None = None
    max: Number | None = None


class LatencyHistogram(WireModel):
    edges_ms: Annotated[list[Number], Field(max_length=MAX_ITEMS)] = []
    counts: Annotated[list[Count], Field(max_length=MAX_ITEMS)] = []


class EarlyStoppingRuns(WireModel):
    p90: Count | None = None
    p99: Count | None = None


class BenchMemory(WireModel):
    available_start: Count | None = None
    available_min: Count | None = None
    available_end: Count | None = None
    swap_in_pages: Int | None = None
    swap_out_pages: Int | None = None


class ThermalSpan(WireModel):
    start: Number
    max: Number
    end: Number


class BenchCpuFreq(WireModel):
    min_mhz: Number | None = None
    max_mhz: Number | None = None
    hw_max_mhz: Number | None = None


class BenchThrottle(WireModel):
    start: Name | None = None
    end: Name | None = None
    now: Flags = {}
    since_boot: Flags = {}
    during_run: Flags = {}


class ResultSettings(WireModel):
    threads: Int | None = None
    spin: Name | None = None
    providers: Annotated[list[Name], Field(max_length=64)] = []


class BenchResult(WireModel):
    """``bench``: the measurement (benchrun's ``result`` line plus the ``started`` facts)."""

    event: Name | None = None
    model: ModelFacts | None = None
    session_create_ms: Number | None = None
    first_run_ms: Number | None = None
    warmup_runs: Count | None = None
    runs: Count
    duration_s: Number | None = None
    stop_reason: Name | None = None
    latency_ms: LatencySummary
    p90_early_stopping_ms: Number | None = None
    p99_early_stopping_ms: Number | None = None
    valid: bool | None = None
    early_stopping_min_runs: EarlyStoppingRuns | None = None
    throughput_ips: Number | None = None
    cpu_percent: Number | None = None
    peak_rss_bytes: Count | None = None
    memory: BenchMemory | None = None
    thermal: Annotated[dict[Name, ThermalSpan], Field(max_length=MAX_ZONES)] = {}
    cpufreq: BenchCpuFreq | None = None
    throttle: BenchThrottle | None = None
    rate_hz: Number | None = None
    deadline_misses: Count | None = None
    late_runs: Count | None = None
    latencies_ms: LatencyHistogram | None = None
    settings: ResultSettings | None = None
    onnxruntime: Name | None = None
    started: BenchStarted | None = None
