"""Models of the handshake and of the small, health and device-journal operations."""

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from fieldkit.wire.types import (
    MAX_CORES, MAX_ITEMS, MAX_ZONES, Count, Flags, Int, Name, Number, Sha256, Text,
    WireModel,
)

__all__ = [
    "HelloHeader",
    "AgentFailure",
    "PingResult",
    "SleepResult",
    "StatResult",
    "HashResult",
    "RemoveResult",
    "PutResult",
    "CpuInfo",
    "CpuFreqCore",
    "MemoryInfo",
    "DiskUsage",
    "TripPoint",
    "ThermalZone",
    "Throttling",
    "RuntimeInfo",
    "AgentInfo",
    "ServiceState",
    "HealthResult",
    "JournalHead",
    "JournalChain",
    "JournalReadResult",
    "JournalCheckpointResult",
]

# ---- handshake ----------------------------------------------------------------------------------


class HelloHeader(WireModel):
    """The agent's handshake header (``AgentSession.hello``)."""

    t: Literal["hello"] | None = None
    proto: Int
    """Protocol version; the link refuses a mismatch."""
    agent_version: Name | None = None
    python: Name | None = None
    capabilities: Annotated[dict[Name, Name | None], Field(max_length=MAX_ZONES)] = {}
    """Optional module -> version ("present" when unknown) or None when not installed."""
    ops: Annotated[list[Name], Field(max_length=MAX_ZONES)] = []
    root: Text | None = None
    pid: Int | None = None
    transport: Name | None = None
    """``stdio`` (SSH, local) or ``serial``; None from older agents."""
    auth_required: bool | None = None
    """Changing operations need ``auth_challenge``/``auth_response`` first (serial)."""
    max_frame: Count | None = None
    max_in_flight: Count | None = None
    put_progress: bool | None = None
    """Uploads are acknowledged as they land (``received`` events); None from older agents."""


class AgentFailure(WireModel):
    """The ``error`` object of a failed response."""

    code: Name = "failed"
    message: Text = "unknown error"
    detail: dict[str, Any] | None = None


# ---- small operations -----------------------------------------------------------------------------


class PingResult(WireModel):
    time: Number
    """The device's clock (seconds since the epoch): the clock offset is computed from it."""


class SleepResult(WireModel):
    slept: bool | None = None


class StatResult(WireModel):
    path: Text | None = None
    exists: bool
    size: Count | None = None
    """Only when the file exists."""
    partial_size: Count = 0
    """Bytes of ``path + ".part"`` already staged (resumable upload)."""


class HashResult(WireModel):
    path: Text | None = None
    sha256: Sha256
    size: Count


class RemoveResult(WireModel):
    removed: Annotated[list[Text], Field(max_length=MAX_ZONES)] = []


class PutResult(WireModel):
    """What an upload (``DeviceLink.upload``, op ``put``) landed as."""

    path: Text
    size: Count
    sha256: Sha256


# ---- health ---------------------------------------------------------------------------------------


class CpuInfo(WireModel):
    count: Count | None = None
    percent: Number | None = None
    per_core: Annotated[list[Number | None], Field(max_length=MAX_CORES)] = []
    load: Annotated[list[Number], Field(max_length=16)] | None = None
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    # How ``percent`` was measured; older agents leave these out (their percent includes fieldkit)
    raw_percent: Number | None = None
    """Busy share of all cores including fieldkit's own processes."""
    excluded_self_percent: Number | None = None
    """Share of all cores fieldkit's own processes used in the window (taken out of ``percent``)."""
    window_s: Number | None = None
    """Length of the sample window in seconds."""
    method: Text | None = None
    """How the device measured it, in words."""


class CpuFreqCore(WireModel):
    core: Int | None = None
    cur_mhz: Number | None = None
    max_mhz: Number | None = None


class MemoryInfo(WireModel):
    total: Count | None = None
    available: Count | None = None
    used_percent: Number | None = None
    swap_total: Count | None = None
    swap_used: Int | None = None
    swap_used_percent: Number | None = None
    pswpin: Count | None = None
    pswpout: Count | None = None


class DiskUsage(WireModel):
    """One filesystem; when it could not be read: ``available`` false and ``error``, no numbers."""

    label: Name | None = None
    path: Text | None = None
    mount: Text | None = None
    total: Count | None = None
    free: Count | None = None
    used_percent: Number | None = None
    exists: bool | None = None
    available: bool | None = None
    error: Text | None = None

    @model_validator(mode="after")
    def _free_with_percent(self) -> "DiskUsage":
        if self.used_percent is not None and self.free is None:
            raise PydanticCustomError("disk_free", "free is required when used_percent is given")
        return self


class TripPoint(WireModel):
    type: Name | None = None
    temp_c: Number | None = None


class ThermalZone(WireModel):
    zone: Name
    type: Name
    temp_c: Number
    trips: Annotated[list[TripPoint], Field(max_length=MAX_ZONES)] = []


class Throttling(WireModel):
    """Firmware throttle flags (``source`` "vcgencmd") and/or cpufreq capping ("cpufreq")."""

    source: Name | None = None
    raw: Name | None = None
    now: Flags = {}
    since_boot: Flags = {}
    cur_min_mhz: Number | None = None
    cur_max_mhz: Number | None = None
    max_mhz: Number | None = None


class RuntimeInfo(WireModel):
    python: Name | None = None
    python_path: Text | None = None
    onnxruntime: Name | None = None
    providers: Annotated[list[Name], Field(max_length=MAX_ZONES)] = []
    onnxruntime_error: Text | None = None
    modules: Annotated[dict[Name, Name | None], Field(max_length=MAX_ZONES)] = {}


class AgentInfo(WireModel):
    version: Name | None = None
    protocol: Int | None = None
    pid: Int | None = None
    root: Text | None = None


class ServiceState(WireModel):
    unit: Name | None = None
    state: Name | None = None
    detail: Text | None = None


class HealthResult(WireModel):
    """``probes.health``: every reading may be missing (None / empty) on a device without it."""

    time: Number | None = None
    hostname: Name | None = None
    os: Text | None = None
    kernel: Name | None = None
    machine: Name | None = None
    cpu: CpuInfo | None = None
    cpufreq: Annotated[list[CpuFreqCore], Field(max_length=MAX_CORES)] | None = None
    memory: MemoryInfo | None = None
    disks: Annotated[list[DiskUsage], Field(max_length=MAX_ZONES)] = []
    temperatures: Annotated[list[ThermalZone], Field(max_length=MAX_ZONES)] = []
    throttling: Throttling | None = None
    uptime_s: Number | None = None
    runtime: RuntimeInfo | None = None
    agent: AgentInfo | None = None
    service: ServiceState | None = None


# ---- device journal -------------------------------------------------------------------------------


class JournalHead(WireModel):
    journal_id: Name | None = None
    """None while the device's journal is empty."""
    seq: Count
    hash: Sha256


class JournalChain(WireModel):
    """The device's check of its whole journal file (``DeviceJournal.verify``)."""

    ok: bool
    entries: Count | None = None
    bad_seq: Count | None = None
    problem: Name | None = None
    message: Text | None = None


class JournalReadResult(WireModel):
    """``journal_read``. The entries stay plain dicts: the laptop checks each one by its hash."""

    journal_id: Name | None = None
    entries: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] = []
    head: JournalHead
    more: bool = False
    chain: JournalChain | None = None


class JournalCheckpointResult(WireModel):
    """``journal_checkpoint``: the laptop checkpoint the device held before (checked by its
    signature), the device entry that recorded the new one, and the device journal's head."""

    previous: dict[str, Any] | None = None
    entry: dict[str, Any] | None = None
    head: JournalHead
