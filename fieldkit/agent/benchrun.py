"""Benchmark one ONNX model on the device and stream the results as JSON lines.

Runs on the device (stdlib + numpy + onnxruntime, Python 3.6 syntax). The agent starts it as a
process of its own, ``python <agent> bench --settings-json '{"model": M, ...}'`` (settings
declared once in :data:`SETTINGS` and checked by the agent before it starts this process; by hand
the same settings are flags, ``--model M --runs 50 ...``, or run ``python -m
fieldkit.agent.benchrun``), and reads its stdout: one JSON object per line, flushed.

    {"event": "started", ...}    model (path, sha256, size), concrete input shapes, settings
    {"event": "progress", ...}   about every progress_interval_s seconds (phase warmup | run)
    {"event": "result", ...}     the measurement, then exit status 0
    {"event": "error", "code": ..., "message": ...}   instead of a result, then exit status 2

Method (docs: REFERENCE.md "On-device benchmarking"): the session is created with explicit
``providers=``, ``intra_op_num_threads`` and ``session.intra_op.allow_spinning`` and graph
optimisation level ALL. Warm-up runs come first; the very first run is reported on its own as
``first_run_ms`` (allocation and weight prepacking make it slow, as onnxruntime_perf_test shows).
Each timed run is measured with ``time.perf_counter_ns()`` with the garbage collector disabled
around the timed loop; nothing else happens between runs except bookkeeping and a progress line
every ~0.5 s. A sampler thread reads /proc/meminfo, thermal zones and cpufreq every ~200 ms.

Without ``rate_hz`` the next run starts when the previous one finishes (MLPerf SingleStream).
With ``rate_hz`` HZ run i is scheduled at t0 + i/HZ (TFLite ``run_frequency``); a run that ends
after the next slot misses it, and the loop skips to the first slot still in the future, counting
every skipped slot in ``deadline_misses`` (no catch-up bursts).

Stopping: with ``runs`` N after N timed runs; otherwise once ``duration_s`` seconds have passed
and at least ``min_runs`` runs were made. ``max_seconds`` (default 3 x duration + 60) stops
the timed loop in every mode; ``stop_reason`` says which rule ended it.

Cancellation: SIGTERM, SIGINT or SIGHUP (the last two unless inherited as ignored, as under
nohup) stop the benchmark promptly, even in the middle of a long inference: the signal wakes the
sampler thread, which sets onnxruntime's ``RunOptions.terminate``. The process then prints
``{"event": "error", "code": "cancelled", "runs": n, ...}`` with no partial result, and exits
with status 2 like every other error. It never starts children other than a short-lived
``vcgencmd`` on Raspberry Pi (waited for, with a timeout).

Error codes: bad_arguments, model_not_found, model_unreadable, invalid_model, unsupported_model,
session_failed, onnxruntime_missing, onnxruntime_broken, numpy_missing, unknown_provider,
provider_failed, bad_shape, shape_mismatch, unsupported_input, inputs_not_found, inputs_invalid,
inputs_missing, inputs_dtype, run_failed, cancelled, internal.
"""

import argparse
import gc
import hashlib
import json
import os
import platform
import select
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from fieldkit.agent import stats
from fieldkit.agent.probes import THROTTLE_BITS, _read, _read_int

EXIT_OK = 0
EXIT_ERROR = 2
PROGRESS_WINDOW = 4096  # progress percentiles cover the most recent runs
HISTOGRAM_BUCKETS = 40
CANCEL_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")

# Integer-nanosecond clocks; Python 3.6 (JetPack 4) has only the float ones.
perf_counter_ns = getattr(time, "perf_counter_ns", None) or (lambda: int(time.perf_counter() * 1e9))
process_time_ns = getattr(time, "process_time_ns", None) or (lambda: int(time.process_time() * 1e9))

# onnxruntime input type -> numpy dtype name
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


class BenchError(Exception):
    """A failure the technician can act on: ``code`` for programs, ``message`` for people."""

    def __init__(self, code, message, **extra):
        # type: (str, str, Any) -> None
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class Cancelled(Exception):
    pass


class OutputClosed(Exception):
    """Whoever reads our stdout has gone away (SSH session closed)."""


# --- output --------------------------------------------------------------------------------------

class Output:
    def __init__(self, stream):
        self.stream = stream

    def emit(self, obj):
        # type: (Dict[str, Any]) -> None
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError; ValueError: stdout already closed
            raise OutputClosed(str(exc))


# --- settings ------------------------------------------------------------------------------------
#
# Declared once: the agent checks the laptop's ``bench`` arguments against this table and hands
# them to this process as JSON (``bench --settings-json '{...}'``); the command-line flags below are
# derived from the same table for running the benchmark by hand. Messages name settings by key.

class Setting(object):
    __slots__ = ("key", "kind", "default", "flag", "metavar", "help", "lo", "hi", "choices")

    def __init__(self, key, kind, default, flag, metavar, help, lo=None, hi=None, choices=None):
        self.key, self.kind, self.default, self.flag, self.metavar = key, kind, default, flag, metavar
        self.help, self.lo, self.hi, self.choices = help, lo, hi, choices


SETTINGS = (
    Setting("model", "path", None, "--model", "PATH", "the .onnx file (required)"),
    Setting("warmup", "int", 10, "--warmup", "N", "untimed warm-up runs; the first is reported as first_run_ms "
            "(default 10; at least 1 always runs)", lo=0, hi=10 ** 6),
    Setting("runs", "int", None, "--runs", "N", "stop after N timed runs (duration_s is then not used)", lo=1,
            hi=10 ** 9),
    Setting("duration_s", "float", None, "--duration", "S", "run for S seconds and at least min_runs runs "
            "(default 20)", hi=30 * 86400.0),
    Setting("min_runs", "int", 64, "--min-runs", "N", "with duration_s, keep going until N runs (default 64, "
            "MLPerf's p90 minimum)", lo=1, hi=10 ** 9),
    Setting("max_seconds", "float", None, "--max-seconds", "S", "hard limit on the timed loop (default 3 x "
            "duration_s + 60; 120 with runs)", hi=90 * 86400.0),
    Setting("threads", "int", 0, "--threads", "N", "intra-op threads (0 = onnxruntime's default)", lo=0, hi=4096),
    Setting("rate_hz", "float", None, "--rate", "HZ", "pace runs at HZ per second and count deadline misses",
            hi=1e6),
    Setting("shapes", "shapes", None, "--shape", "NAME=DIMS", "concrete shape for an input with symbolic dims, "
            "e.g. input=1x3x224x224 (repeatable)"),
    Setting("inputs", "path", None, "--inputs", "FILE.npz", "input arrays by input name (default: seeded random "
            "data)"),
    Setting("seed", "int", 0, "--seed", "N", "seed for the random inputs (default 0)", lo=0, hi=2 ** 63 - 1),
    Setting("spin", "choice", "on", "--spin", None, "let intra-op threads spin between runs (onnxruntime's "
            "default: on)", choices=("on", "off")),
    Setting("providers", "providers", None, "--provider", "P", "execution provider, in priority order "
            "(repeatable; default CPUExecutionProvider)"),
    Setting("progress_interval_s", "float", 0.5, "--progress-interval", "S", "seconds between progress lines "
            "(default 0.5)", hi=3600.0),
)
SETTING_KEYS = tuple(s.key for s in SETTINGS)
MAX_SHAPES = 64
MAX_DIMS = 16
MAX_PROVIDERS = 16


class Settings(object):
    """Checked settings, one attribute per key of :data:`SETTINGS`."""

    def __init__(self, values):
        for key, value in values.items():
            setattr(self, key, value)

    def as_json(self):
        return dict((k, getattr(self, k)) for k in SETTING_KEYS if k not in ("duration_given",))


def _number_text(value):
    return repr(value) if not isinstance(value, str) else repr(value[:40])


def check_settings(raw, need_model=True):
    # type: (Dict[str, Any], bool) -> Settings
    """Check a settings dict (keys of :data:`SETTINGS`) and fill in defaults; BenchError
    ``bad_arguments`` naming the key otherwise, e.g. "threads must be a whole number >= 0, got -1"."""
    from fieldkit.agent import fields
    from fieldkit.agent.protocol import RemoteError

    if not isinstance(raw, dict):
        raise BenchError("bad_arguments", "bench settings must be an object")
    unknown = sorted(str(k)[:40] for k in raw if k not in SETTING_KEYS)
    if unknown:
        raise BenchError("bad_arguments", "unknown bench setting(s): %s" % ", ".join(unknown))
    out = {}
    try:
        for s in SETTINGS:
            if s.kind == "int":
                out[s.key] = fields.get_int(raw, s.key, s.default, lo=s.lo, hi=s.hi)
            elif s.kind == "float":
                out[s.key] = fields.get_float(raw, s.key, s.default, hi=s.hi, positive=True)
            elif s.kind == "path":
                out[s.key] = fields.get_str(raw, s.key, s.default)
            elif s.kind == "choice":
                out[s.key] = fields.get_str(raw, s.key, s.default, limit=20, choices=s.choices)
            elif s.kind == "shapes":
                out[s.key] = _check_shapes(raw.get(s.key))
            elif s.kind == "providers":
                out[s.key] = _check_providers(raw.get(s.key))
    except RemoteError as exc:
        raise BenchError("bad_arguments", exc.message)
    if need_model and out["model"] is None:
        raise BenchError("bad_arguments", "model is required: the path of the .onnx file")
    if out["runs"] is not None:
        out["duration_s"] = None  # runs decides; a duration sent along is checked but not used
    out["duration_given"] = out["duration_s"] is not None
    if out["duration_s"] is None:
        out["duration_s"] = 20.0
    if out["max_seconds"] is None:
        out["max_seconds"] = 3 * out["duration_s"] + 60
    if not out["providers"]:
        out["providers"] = ["CPUExecutionProvider"]
    return Settings(out)


def _check_shapes(value):
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_SHAPES:
        raise BenchError("bad_arguments", "shapes must map up to %d input names to lists of dimensions" % MAX_SHAPES)
    shapes = {}
    for name, dims in value.items():
        if not isinstance(name, str) or not name or len(name) > 200:
            raise BenchError("bad_arguments", "shapes: input names must be non-empty texts")
        ok = isinstance(dims, list) and 0 < len(dims) <= MAX_DIMS and all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d < 2 ** 31 for d in dims)
        if not ok:
            raise BenchError("bad_shape", "shapes: the shape of input '%s' must be a list of 1 to %d positive whole "
                             "numbers, e.g. [1, 3, 224, 224], got %s" % (name[:80], MAX_DIMS, _number_text(dims)[:80]))
        shapes[name] = list(dims)
    return shapes


def _check_providers(value):
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PROVIDERS or not all(
            isinstance(p, str) and p and len(p) <= 100 for p in value):
        raise BenchError("bad_arguments", "providers must be a list of up to %d execution provider names"
                         % MAX_PROVIDERS)
    return list(value)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # type: ignore[override]
        raise BenchError("bad_arguments", "bench: %s (see --help)" % message)


def build_parser():
    # type: () -> argparse.ArgumentParser
    """Flags for a run by hand, derived from :data:`SETTINGS` (plus ``--settings-json``)."""
    p = _Parser(prog="fieldkit-agent bench", description="Benchmark an ONNX model on this device; "
                "prints JSON lines (started, progress, result or error).")
    p.add_argument("--settings-json", metavar="JSON", help="all settings as one JSON object (keys: %s); "
                   "how the agent starts the benchmark" % ", ".join(SETTING_KEYS))
    for s in SETTINGS:
        repeat = s.kind in ("shapes", "providers")
        p.add_argument(s.flag, dest=s.key, metavar=s.metavar, help=s.help, choices=s.choices,
                       action="append" if repeat else "store", default=None)
    return p


def _from_text(kind, text):
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        return text  # check_settings names the key and the bad value


def parse_args(argv):
    # type: (List[str]) -> Settings
    ns = build_parser().parse_args(argv)
    given = dict((s.key, getattr(ns, s.key)) for s in SETTINGS if getattr(ns, s.key) is not None)
    if ns.settings_json is not None:
        if given:
            raise BenchError("bad_arguments", "give either --settings-json or flags, not both")
        try:
            raw = json.loads(ns.settings_json)
        except (ValueError, RecursionError) as exc:
            raise BenchError("bad_arguments", "--settings-json is not valid JSON: %s" % str(exc)[:200])
        return check_settings(raw)
    raw = {}
    for s in SETTINGS:
        value = given.get(s.key)
        if value is None:
            continue
        if s.kind in ("int", "float"):
            value = _from_text(s.kind, value)
        elif s.kind == "shapes":
            value = dict(_parse_shape(item) for item in value)
        raw[s.key] = value
    return check_settings(raw)


def _parse_shape(item):
    name, sep, dims = item.rpartition("=")
    if not sep or not name:
        raise BenchError("bad_shape", "--shape %s: write NAME=DIMS, e.g. input=1x3x224x224" % item)
    try:
        values = [int(d) for d in dims.replace(",", "x").split("x")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise BenchError("bad_shape", "--shape %s: dimensions must be positive whole numbers separated "
                         "by x, e.g. %s=1x3x224x224" % (item, name))
    return name, values


# --- device readings -----------------------------------------------------------------------------

def mem_available(proc_root="/proc"):
    # type: (str) -> Optional[int]
    text = _read(os.path.join(proc_root, "meminfo"))
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def swap_counters(proc_root="/proc"):
    # type: (str) -> Dict[str, Optional[int]]
    out = {"pswpin": None, "pswpout": None}  # type: Dict[str, Optional[int]]
    for line in (_read(os.path.join(proc_root, "vmstat")) or "").splitlines():
        key, _, val = line.partition(" ")
        if key in out:
            try:
                out[key] = int(val)
            except ValueError:
                pass
    return out


def peak_rss_bytes():
    # type: () -> Optional[int]
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                break
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux
    except (ImportError, OSError, ValueError):
        return None


def vcgencmd_throttled():
    # type: () -> Optional[int]
    """Raspberry Pi firmware throttle flags, or None where vcgencmd is missing or fails."""
    import shutil
    import subprocess

    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=3).stdout
        return int(out.strip().split("=", 1)[1], 16)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def decode_throttle(start, end):
    # type: (Optional[int], Optional[int]) -> Optional[Dict[str, Any]]
    if end is None:
        return None
    before = start or 0
    return {
        "start": None if start is None else hex(start),
        "end": hex(end),
        "now": {name: bool(end & bit) for bit, name in THROTTLE_BITS},
        "since_boot": {name: bool(end & (bit << 16)) for bit, name in THROTTLE_BITS},
        # a sticky bit that was clear before the run and set after it happened during the run
        "during_run": {name: bool(end & (bit << 16)) and not before & (bit << 16) for bit, name in THROTTLE_BITS},
    }


class Sampler(threading.Thread):
    """Reads MemAvailable, thermal zones and cpufreq every ``interval`` seconds.

    Every read is a small sysfs/procfs file, so one sample costs well under a millisecond. The
    thread also watches the signal wakeup fd: a cancel signal sets ``RunOptions.terminate`` so an
    inference in progress stops without waiting for the main thread.
    """

    def __init__(self, interval=0.2, sys_root="/sys", proc_root="/proc", wakeup_fd=None, on_signal=None):
        super().__init__(name="bench-sampler", daemon=True)
        self.interval = interval
        self.proc_root = proc_root
        self.wakeup_fd = wakeup_fd
        self.on_signal = on_signal
        self._stop_r, self._stop_w = os.pipe()
        self.zones = self._find_zones(os.path.join(sys_root, "class", "thermal"))
        self.freq_paths = self._find_cpufreq(os.path.join(sys_root, "devices", "system", "cpu"))
        self.hw_max_khz = None  # type: Optional[int]
        for path in self.freq_paths:
            mx = _read_int(os.path.join(os.path.dirname(path), "cpuinfo_max_freq"))
            if mx is not None:
                self.hw_max_khz = max(self.hw_max_khz or 0, mx)
        self.lock = threading.Lock()
        self.mem_start = self.mem_min = self.mem_end = None  # type: Optional[int]
        self.temps = {}  # type: Dict[str, List[float]]
        self.temp_now = None  # type: Optional[float]
        self.freq_min = self.freq_max = None  # type: Optional[int]
        self.samples = 0
        self.sample()

    @staticmethod
    def _find_zones(base):
        # type: (str) -> List[Tuple[str, str]]
        try:
            names = sorted((n for n in os.listdir(base) if n.startswith("thermal_zone")),
                           key=lambda n: int(n[12:]) if n[12:].isdigit() else 0)
        except OSError:
            return []
        zones = []  # type: List[Tuple[str, str]]
        used = set()
        for name in names:
            kind = (_read(os.path.join(base, name, "type")) or "").strip() or name
            key = kind if kind not in used else "%s:%s" % (kind, name)
            used.add(key)
            zones.append((key, os.path.join(base, name, "temp")))
        return zones

    @staticmethod
    def _find_cpufreq(base):
        # type: (str) -> List[str]
        try:
            names = sorted((n for n in os.listdir(base) if n.startswith("cpu") and n[3:].isdigit()),
                           key=lambda n: int(n[3:]))
        except OSError:
            return []
        paths = [os.path.join(base, n, "cpufreq", "scaling_cur_freq") for n in names]
        return [p for p in paths if os.path.exists(p)]

    def sample(self):
        # type: () -> None
        mem = mem_available(self.proc_root)
        temps = []
        for key, path in self.zones:
            milli = _read_int(path)
            if milli is not None:
                temps.append((key, milli / 1000.0))
        freqs = [f for f in (_read_int(p) for p in self.freq_paths) if f is not None]
        with self.lock:
            self.samples += 1
            if mem is not None:
                if self.mem_start is None:
                    self.mem_start = mem
                self.mem_min = mem if self.mem_min is None else min(self.mem_min, mem)
                self.mem_end = mem
            for key, value in temps:
                rec = self.temps.get(key)
                if rec is None:
                    self.temps[key] = [value, value, value]
                else:
                    rec[1] = max(rec[1], value)
                    rec[2] = value
            self.temp_now = max(v for _, v in temps) if temps else None
            if freqs:
                lo, hi = min(freqs), max(freqs)
                self.freq_min = lo if self.freq_min is None else min(self.freq_min, lo)
                self.freq_max = hi if self.freq_max is None else max(self.freq_max, hi)

    def run(self):
        fds = [self._stop_r] + ([self.wakeup_fd] if self.wakeup_fd is not None else [])
        while True:
            try:
                ready, _, _ = select.select(fds, [], [], self.interval)
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            if self.wakeup_fd is not None and self.wakeup_fd in ready:
                try:
                    data = os.read(self.wakeup_fd, 64)
                except OSError:
                    data = b""
                names = {int(getattr(signal, s)): s for s in CANCEL_SIGNALS if hasattr(signal, s)}
                got = [names[b] for b in bytearray(data) if b in names]
                if self.on_signal is not None and got:
                    self.on_signal(got[0])
            self.sample()

    def stop(self):
        # type: () -> None
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self.is_alive():
            self.join(timeout=2.0)
        self.sample()
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def report(self):
        # type: () -> Dict[str, Any]
        with self.lock:
            return {
                "memory": {"available_start": self.mem_start, "available_min": self.mem_min,
                           "available_end": self.mem_end},
                "thermal": {k: {"start": v[0], "max": v[1], "end": v[2]} for k, v in self.temps.items()},
                "cpufreq": None if self.freq_min is None else {
                    "min_mhz": round(self.freq_min / 1000.0), "max_mhz": round(self.freq_max / 1000.0),
                    "hw_max_mhz": None if self.hw_max_khz is None else round(self.hw_max_khz / 1000.0)},
                "samples": self.samples,
            }


# --- cancellation --------------------------------------------------------------------------------

class CancelState:
    def __init__(self):
        self.cancelled = False
        self.signal_name = None  # type: Optional[str]
        self.run_options = None  # onnxruntime.RunOptions once created

    def cancel(self, name=None):
        # type: (Optional[str]) -> None
        self.cancelled = True
        if name and not self.signal_name:
            self.signal_name = name
        ro = self.run_options
        if ro is not None:
            try:
                ro.terminate = True
            except Exception:
                pass

    def check(self):
        # type: () -> None
        if self.cancelled:
            raise Cancelled()


def install_signals(state):
    # type: (CancelState) -> Tuple[Optional[int], Any]
    """Route SIGTERM/SIGINT/SIGHUP to ``state``; returns (wakeup read fd, restore function)."""
    if threading.current_thread() is not threading.main_thread():
        return None, lambda: None
    previous = {}
    for name in CANCEL_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        old = signal.getsignal(signum)
        if old is signal.SIG_IGN and name != "SIGTERM":
            continue  # started under nohup, or as a background job: the parent wants us to ignore it
        previous[signum] = old
        signal.signal(signum, lambda num, _frame: state.cancel(signal.Signals(num).name))
    wake_r = wake_w = None
    old_wakeup = -1
    try:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    except (OSError, ValueError):
        wake_r = None

    def restore():
        for signum, handler in previous.items():
            try:
                signal.signal(signum, handler)
            except (OSError, ValueError, TypeError):
                pass
        if wake_w is not None:
            try:
                signal.set_wakeup_fd(old_wakeup)
            except (OSError, ValueError):
                pass
            for fd in (wake_r, wake_w):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    return wake_r, restore


# --- model and inputs ----------------------------------------------------------------------------

def model_facts(path):
    # type: (str) -> Dict[str, Any]
    if not os.path.exists(path):
        raise BenchError("model_not_found", "model file %s not found on the device: check the path, or deploy "
                         "the model first" % path)
    if not os.path.isfile(path):
        raise BenchError("model_not_found", "%s is not a file: give the path of the .onnx file" % path)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise BenchError("model_unreadable", "cannot read %s: %s" % (path, exc.strerror or exc))
    return {"path": os.path.abspath(path), "sha256": digest.hexdigest(), "size_bytes": size}


def import_runtime():
    # type: () -> Tuple[Any, Any]
    try:
        import numpy
    except ImportError:
        raise BenchError("numpy_missing", "numpy is not installed on the device: pip install numpy, or use a "
                         "profile/image that ships it")
    try:
        import onnxruntime
    except ImportError:
        raise BenchError("onnxruntime_missing", "onnxruntime is not installed on the device: pip install "
                         "onnxruntime, or use a profile/image that ships it")
    except Exception as exc:  # e.g. a wheel built for another CPU or glibc
        raise BenchError("onnxruntime_broken", "onnxruntime is installed but fails to load (%s: %s): reinstall "
                         "it for this device's Python and CPU" % (type(exc).__name__, exc))
    return numpy, onnxruntime


def _ort_detail(exc):
    # type: (BaseException) -> str
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from x failed:Protobuf parsing failed."
    if text.startswith("[ONNXRuntimeError]"):
        parts = text.split(" : ", 3)
        if len(parts) == 4:
            text = "%s: %s" % (parts[2], parts[3])
    return text[:300]


def create_session(ort, args, facts):
    # type: (Any, Settings, Dict[str, Any]) -> Tuple[Any, float]
    available = list(ort.get_available_providers())
    for p in args.providers:
        if p not in available:
            raise BenchError("unknown_provider", "execution provider %r is not available on this device "
                             "(onnxruntime %s has: %s)" % (p, ort.__version__, ", ".join(available)))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = args.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if args.spin == "on" else "0")
    so.log_severity_level = 3  # errors only: warnings would go to stderr on every run
    name = os.path.basename(args.model)
    if facts["size_bytes"] == 0:
        raise BenchError("invalid_model", "%s is empty (0 bytes): re-copy it" % name, sha256=facts["sha256"])
    t0 = perf_counter_ns()
    try:
        sess = ort.InferenceSession(args.model, sess_options=so, providers=list(args.providers))
    except Exception as exc:
        kind = type(exc).__name__
        detail = _ort_detail(exc)
        low = detail.lower()
        if kind in ("InvalidProtobuf", "InvalidGraph") or "protobuf" in low or "no graph was found" in low:
            raise BenchError("invalid_model", "%s is not a valid ONNX model (%s): re-copy it or check the file's "
                             "sha256 (on the device: %s)" % (name, detail, facts["sha256"]), sha256=facts["sha256"])
        if kind == "NotImplemented":
            raise BenchError("unsupported_model", "onnxruntime %s on this device cannot run %s (%s): export the "
                             "model for an older opset or update onnxruntime" % (ort.__version__, name, detail))
        raise BenchError("session_failed", "onnxruntime could not load %s (%s)" % (name, detail))
    create_ms = (perf_counter_ns() - t0) / 1e6
    active = list(sess.get_providers())
    missing = [p for p in args.providers if p not in active]
    if missing:
        raise BenchError("provider_failed", "execution provider %s did not start for %s (session runs on: %s); "
                         "check its libraries/drivers on the device" % (", ".join(missing), name, ", ".join(active)))
    return sess, create_ms


def _dims_text(shape):
    # type: (List[Any]) -> str
    return "[%s]" % ",".join(str(d) if isinstance(d, int) else (d or "?") for d in shape)


def _concrete(name, model_shape, given):
    # type: (str, List[Any], Optional[List[int]]) -> List[int]
    """Resolve ``model_shape`` (ints, names or None) with ``given``; symbolic dims default to 1."""
    if given is None:
        return [d if isinstance(d, int) and d > 0 else 1 for d in model_shape]
    ok = len(given) == len(model_shape) and all(
        not (isinstance(m, int) and m > 0) or m == g for m, g in zip(model_shape, given))
    if not ok:
        raise BenchError("shape_mismatch", "input '%s' expects %s; got %s"
                         % (name, _dims_text(model_shape), "x".join(str(g) for g in given)))
    return list(given)


def prepare_inputs(np, sess, args):
    # type: (Any, Any, Settings) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]
    model_inputs = sess.get_inputs()
    names = [i.name for i in model_inputs]
    for name in args.shapes:
        if name not in names:
            raise BenchError("bad_shape", "shapes names input '%s', but the model's inputs are: %s"
                             % (name, ", ".join(names)))
    arrays = None
    if args.inputs:
        arrays = load_npz(np, args.inputs, names)
    rng = np.random.default_rng(args.seed)
    feeds = {}
    described = []
    for inp in model_inputs:
        dtype = ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise BenchError("unsupported_input", "input '%s' has type %s, which bench cannot feed" % (inp.name, inp.type))
        model_shape = list(inp.shape)
        if arrays is not None:
            arr = arrays[inp.name]
            if arr.dtype.name != dtype:
                raise BenchError("inputs_dtype", "%s: array '%s' is %s; the model expects %s"
                                 % (os.path.basename(args.inputs), inp.name, arr.dtype.name, dtype))
            shape = _concrete(inp.name, model_shape, list(arr.shape))
            if inp.name in args.shapes and args.shapes[inp.name] != shape:
                raise BenchError("shape_mismatch", "shapes: %s=%s disagrees with the array in %s (%s)" % (
                    inp.name, "x".join(map(str, args.shapes[inp.name])), os.path.basename(args.inputs),
                    "x".join(map(str, shape))))
            feeds[inp.name] = np.ascontiguousarray(arr)
        else:
            shape = _concrete(inp.name, model_shape, args.shapes.get(inp.name))
            feeds[inp.name] = random_array(np, rng, shape, dtype)
        described.append({"name": inp.name, "shape": shape, "dtype": dtype, "model_shape": model_shape})
    return feeds, described


def random_array(np, rng, shape, dtype):
    # type: (Any, Any, List[int], str) -> Any
    if dtype.startswith("float"):
        return rng.random(shape, dtype=np.float32 if dtype == "float16" else dtype).astype(dtype)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    return rng.integers(0, 2, size=shape).astype(dtype)  # 0/1: valid ids, masks and indices


def load_npz(np, path, names):
    # type: (Any, str, List[str]) -> Dict[str, Any]
    base = os.path.basename(path)
    if not os.path.isfile(path):
        raise BenchError("inputs_not_found", "inputs file %s not found on the device" % path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise BenchError("inputs_invalid", "%s is not a readable .npz file (%s): save it with numpy.savez" % (base, exc))
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BenchError("inputs_missing", "%s has no array for input(s) %s (it has: %s)" % (
            base, ", ".join("'%s'" % m for m in missing), ", ".join(sorted(arrays)) or "nothing"))
    return arrays


# --- the benchmark -------------------------------------------------------------------------------

def _pctl_ms(values, q):
    return round(stats.percentile(values, q) / 1e6, 4)


class Bench:
    def __init__(self, args, out, state, wakeup_fd=None, clock=None, sleep=None):
        """``clock`` (nanoseconds, default ``time.perf_counter_ns``) and ``sleep`` (seconds, default
        ``time.sleep``) drive the timed loop's pacing: tests replace them with a virtual clock, so
        the scheduling is checked exactly, whatever the load of the machine running them."""
        self.args = args
        self.out = out
        self.state = state
        self.wakeup_fd = wakeup_fd
        self.clock = clock or perf_counter_ns
        self.sleep = sleep or time.sleep
        self.sampler = None  # type: Optional[Sampler]
        self.runs_done = 0

    def run(self):
        # type: () -> Dict[str, Any]
        args, state = self.args, self.state
        facts = model_facts(args.model)
        np, ort = import_runtime()
        state.check()
        swap_start = swap_counters()
        throttle_start = vcgencmd_throttled()
        self.sampler = Sampler(wakeup_fd=self.wakeup_fd, on_signal=state.cancel)
        self.sampler.start()
        try:
            sess, create_ms = create_session(ort, args, facts)
            state.check()
            feeds, described = prepare_inputs(np, sess, args)
            ro = ort.RunOptions()
            state.run_options = ro
            state.check()
            settings = {
                "warmup": max(1, args.warmup),
                "runs": args.runs,
                "duration_s": None if args.runs else args.duration_s,
                "min_runs": None if args.runs else args.min_runs,
                "max_seconds": args.max_seconds,
                "threads": args.threads,
                "spin": args.spin,
                "providers": list(args.providers),
                "rate_hz": args.rate_hz,
                "inputs": os.path.abspath(args.inputs) if args.inputs else "random(seed=%d)" % args.seed,
                "graph_optimization": "all",
                "progress_interval_s": args.progress_interval_s,
            }
            self.out.emit({
                "event": "started",
                "pid": os.getpid(),
                "model": facts,
                "inputs": described,
                "outputs": [{"name": o.name, "shape": list(o.shape), "type": o.type} for o in sess.get_outputs()],
                "settings": settings,
                "session_create_ms": round(create_ms, 3),
                "onnxruntime": ort.__version__,
                "providers": list(sess.get_providers()),
                "python": platform.python_version(),
                "machine": platform.machine(),
            })
            first_ms = self.warmup(sess, feeds, ro)
            loop = self.timed_loop(sess, feeds, ro)
        finally:
            self.sampler.stop()
        throttle_end = vcgencmd_throttled() if throttle_start is not None else None
        swap_end = swap_counters()
        lat = loop["latencies"]
        p90_es, valid, need90 = stats.early_stopping_percentile(lat, 0.90)
        p99_es, _, need99 = stats.early_stopping_percentile(lat, 0.99)
        sampled = self.sampler.report()
        duration_s = loop["wall_ns"] / 1e9

        def delta(key):
            a, b = swap_start.get(key), swap_end.get(key)
            return None if a is None or b is None else b - a

        memory = dict(sampled["memory"])
        memory["swap_in_pages"] = delta("pswpin")
        memory["swap_out_pages"] = delta("pswpout")
        return {
            "event": "result",
            "model": facts,
            "session_create_ms": round(create_ms, 3),
            "first_run_ms": round(first_ms, 4),
            "warmup_runs": max(1, args.warmup),
            "runs": len(lat),
            "duration_s": round(duration_s, 4),
            "stop_reason": loop["stop_reason"],
            "latency_ms": stats.summary(lat),
            "p90_early_stopping_ms": p90_es,
            "p99_early_stopping_ms": p99_es,
            "valid": valid,
            "early_stopping_min_runs": {"p90": need90, "p99": need99},
            "throughput_ips": round(len(lat) / duration_s, 3) if duration_s > 0 else None,
            "cpu_percent": round(100.0 * loop["cpu_ns"] / loop["wall_ns"], 1) if loop["wall_ns"] > 0 else None,
            "peak_rss_bytes": peak_rss_bytes(),
            "memory": memory,
            "thermal": sampled["thermal"],
            "cpufreq": sampled["cpufreq"],
            "throttle": decode_throttle(throttle_start, throttle_end),
            "rate_hz": args.rate_hz,
            "deadline_misses": loop["misses"] if args.rate_hz else 0,
            "late_runs": loop["late_runs"] if args.rate_hz else 0,
            "latencies_ms": stats.log_histogram(lat, HISTOGRAM_BUCKETS),
            "settings": {"threads": args.threads, "spin": args.spin, "providers": list(sess.get_providers())},
            "onnxruntime": ort.__version__,
        }

    def _call(self, sess, feeds, ro):
        try:
            sess.run(None, feeds, ro)
        except Exception as exc:
            if self.state.cancelled:
                raise Cancelled()
            raise BenchError("run_failed", "inference failed on %s (%s)" % (os.path.basename(self.args.model),
                                                                           _ort_detail(exc)))

    def warmup(self, sess, feeds, ro):
        # type: (Any, Dict[str, Any], Any) -> float
        n = max(1, self.args.warmup)
        interval = int(self.args.progress_interval_s * 1e9)
        start = perf_counter_ns()
        next_progress = start + interval
        first_ms = 0.0
        for i in range(n):
            a = perf_counter_ns()
            self._call(sess, feeds, ro)
            b = perf_counter_ns()
            if i == 0:
                first_ms = (b - a) / 1e6
            self.state.check()
            if b >= next_progress:
                self.out.emit({"event": "progress", "phase": "warmup", "runs": i + 1, "elapsed_s": round((b - start) / 1e9, 3),
                               "eta_s": round((n - i - 1) * (b - start) / (i + 1) / 1e9, 2), "p50_ms": None,
                               "p90_ms": None, "p99_ms": None, "last_ms": round((b - a) / 1e6, 4),
                               "temp_c": self.sampler.temp_now if self.sampler else None})
                next_progress = b + interval
        return first_ms

    def _sleep_until(self, target_ns):
        # type: (int) -> None
        while True:
            left = target_ns - self.clock()
            if left <= 0 or self.state.cancelled:
                return
            self.sleep(min(left / 1e9, 0.05))

    def timed_loop(self, sess, feeds, ro):
        # type: (Any, Dict[str, Any], Any) -> Dict[str, Any]
        args, state, out = self.args, self.state, self.out
        runs_target = args.runs
        duration_ns = int(args.duration_s * 1e9)
        max_ns = int(args.max_seconds * 1e9)
        min_runs = args.min_runs
        interval = int(args.progress_interval_s * 1e9)
        period = int(round(1e9 / args.rate_hz)) if args.rate_hz else 0
        lat = []  # type: List[int]
        append = lat.append
        clock = self.clock
        run = sess.run
        misses = late_runs = 0
        slot = 0
        stop_reason = None
        gc.collect()
        gc.disable()
        try:
            cpu0 = process_time_ns()
            t0 = clock()
            next_progress = t0 + interval
            end = t0
            while True:
                if period:
                    self._sleep_until(t0 + slot * period)
                a = clock()
                try:
                    run(None, feeds, ro)
                except Exception as exc:
                    if state.cancelled:
                        raise Cancelled()
                    raise BenchError("run_failed", "inference failed on %s after %d runs (%s)" % (
                        os.path.basename(args.model), len(lat), _ort_detail(exc)))
                end = clock()
                append(end - a)
                if period:
                    slot += 1
                    if end > t0 + slot * period:
                        # missed the next slot: skip to the first slot still ahead, no catch-up burst
                        late_runs += 1
                        nxt = -(-(end - t0) // period)
                        misses += nxt - slot
                        slot = nxt
                self.runs_done = n = len(lat)
                if state.cancelled:
                    raise Cancelled()
                elapsed = end - t0
                if runs_target is not None:
                    if n >= runs_target:
                        stop_reason = "runs"
                        break
                elif elapsed >= duration_ns and n >= min_runs:
                    stop_reason = "duration"
                    break
                if elapsed >= max_ns:
                    stop_reason = "max_seconds"
                    break
                if end >= next_progress:
                    window = sorted(lat[-PROGRESS_WINDOW:])
                    out.emit({
                        "event": "progress", "phase": "run", "runs": n, "elapsed_s": round(elapsed / 1e9, 3),
                        "eta_s": self._eta(n, elapsed), "p50_ms": _pctl_ms(window, 0.5),
                        "p90_ms": _pctl_ms(window, 0.9), "p99_ms": _pctl_ms(window, 0.99),
                        "last_ms": round(lat[-1] / 1e6, 4), "temp_c": self.sampler.temp_now if self.sampler else None,
                    })
                    next_progress = clock() + interval
            wall = end - t0
            cpu = process_time_ns() - cpu0
        finally:
            gc.enable()
        return {"latencies": lat, "wall_ns": wall, "cpu_ns": cpu, "misses": misses, "late_runs": late_runs,
                "stop_reason": stop_reason}

    def _eta(self, n, elapsed_ns):
        # type: (int, int) -> Optional[float]
        args = self.args
        per_run = elapsed_ns / 1e9 / n
        if args.runs is not None:
            eta = (args.runs - n) * per_run
        else:
            eta = max(args.duration_s - elapsed_ns / 1e9, (args.min_runs - n) * per_run, 0.0)
        return round(max(0.0, min(eta, args.max_seconds - elapsed_ns / 1e9)), 2)


def main(argv=None):
    # type: (Optional[List[str]]) -> int
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Output(sys.stdout)
    state = CancelState()
    wake_r, restore = install_signals(state)
    bench = None
    try:
        try:
            args = parse_args(argv)
            bench = Bench(args, out, state, wakeup_fd=wake_r)
            out.emit(bench.run())
            return EXIT_OK
        except Cancelled:
            runs = bench.runs_done if bench is not None else 0
            how = state.signal_name or "a signal"
            out.emit({"event": "error", "code": "cancelled", "runs": runs,
                      "message": "benchmark cancelled by %s after %d timed runs; no result was recorded" % (how, runs)})
            return EXIT_ERROR
        except BenchError as exc:
            event = {"event": "error", "code": exc.code, "message": exc.message}
            event.update(exc.extra)
            out.emit(event)
            return EXIT_ERROR
        except OutputClosed:
            return EXIT_ERROR
        except Exception as exc:  # a bug: still answer in the protocol rather than with a traceback only
            import traceback
            traceback.print_exc()
            out.emit({"event": "error", "code": "internal", "message": "bench failed unexpectedly: %s: %s"
                      % (type(exc).__name__, exc)})
            return EXIT_ERROR
    except OutputClosed:
        return EXIT_ERROR
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
