"""Health probes read on the device (stdlib only, Python 3.6).

Every probe reads the real kernel interfaces (/proc, /sys, statvfs). A sensor the device does
not have is reported as not available (``None`` or an empty list), never as an error and never
as an invented number.
"""

import os
import platform
import shutil
import socket
import subprocess
import sys
import time

from fieldkit.agent import AGENT_VERSION, PROTOCOL_VERSION, selfcpu

OPTIONAL_MODULES = ("psutil", "onnxruntime", "numpy", "cryptography")

# Raspberry Pi `vcgencmd get_throttled` bits (REFERENCE.md).
THROTTLE_BITS = (
    (0x1, "under_voltage"),
    (0x2, "freq_capped"),
    (0x4, "throttled"),
    (0x8, "soft_temp_limit"),
)


def _read(path):
    try:
        with open(path, "r") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path):
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def module_versions():
    """Versions of the optional modules that are importable, without importing them."""
    out = {}
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        metadata = None
    import importlib.util
    for name in OPTIONAL_MODULES:
        if importlib.util.find_spec(name) is None:
            out[name] = None
            continue
        version = "present"
        if metadata is not None:
            try:
                version = metadata.version(name)
            except Exception:
                pass
        out[name] = version
    return out


_ORT_CACHE = {}


def onnxruntime_info():
    """Version and providers of onnxruntime on the device (imported once, then cached)."""
    if "info" not in _ORT_CACHE:
        try:
            import onnxruntime
            _ORT_CACHE["info"] = {
                "version": onnxruntime.__version__,
                "providers": list(onnxruntime.get_available_providers()),
                "error": None,
            }
        except ImportError:
            _ORT_CACHE["info"] = {"version": None, "providers": [], "error": "onnxruntime is not installed"}
        except Exception as exc:  # a broken install should be reported, not crash the agent
            _ORT_CACHE["info"] = {"version": None, "providers": [], "error": "onnxruntime failed to load: %s" % exc}
    return _ORT_CACHE["info"]


def _cpu_times():
    text = _read("/proc/stat")
    if text is None:
        return None
    cores = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        vals = [int(v) for v in parts[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        # guest time is already included in user/nice
        total = sum(vals[:8])
        cores[parts[0]] = (total, idle)
    return cores


def cpu(sample_s=0.25):
    """Device CPU load over a ``sample_s`` window, fieldkit's own CPU time taken out.

    ``percent`` is the busy share of all cores from ``/proc/stat`` minus the ticks fieldkit's own
    process trees used in the same window (this agent and its children, other agents: see
    :mod:`.selfcpu`); ``raw_percent`` is the share with them, ``excluded_self_percent`` the
    difference. ``per_core`` is raw (the kernel does not say which core a process ran on)."""
    load = None
    try:
        load = list(os.getloadavg())
    except (OSError, AttributeError):
        pass
    result = {"count": os.cpu_count(), "percent": None, "per_core": [], "load": load}
    first = _cpu_times()
    if first is None:
        return result
    own_first = selfcpu.snapshot()
    t0 = time.monotonic()
    time.sleep(max(0.05, sample_s))
    own_second = selfcpu.snapshot()
    second = _cpu_times() or {}
    window = time.monotonic() - t0

    def busy(name):
        a, b = first.get(name), second.get(name)
        if not a or not b or b[0] <= a[0]:
            return None
        dt, di = b[0] - a[0], b[1] - a[1]
        return round(100.0 * (dt - di) / dt, 1)

    names = sorted((n for n in second if n != "cpu"), key=lambda n: int(n[3:]))
    result["per_core"] = [busy(n) for n in names]
    result["count"] = len(names) or result["count"]
    a, b = first.get("cpu"), second.get("cpu")
    if not a or not b or b[0] <= a[0]:
        return result
    total, busy_ticks = b[0] - a[0], max(0, (b[0] - a[0]) - (b[1] - a[1]))
    own, trees = selfcpu.ticks_between(own_first, own_second)
    own = min(own, busy_ticks)
    result.update({
        "percent": round(100.0 * (busy_ticks - own) / total, 1),
        "raw_percent": round(100.0 * busy_ticks / total, 1),
        "excluded_self_percent": round(100.0 * own / total, 1),
        "window_s": round(window, 3),
        "method": ("/proc/stat over %.2f s minus fieldkit's own CPU time (%d process tree%s)"
                   % (window, trees, "" if trees == 1 else "s")) if own_first is not None
                  else "/proc/stat over %.2f s (no /proc/PID: fieldkit's own time not excluded)" % window,
    })
    return result


def cpufreq():
    """Current and maximum frequency per core in MHz (cpufreq sysfs), or None."""
    base = "/sys/devices/system/cpu"
    cores = []
    try:
        names = sorted((n for n in os.listdir(base) if n.startswith("cpu") and n[3:].isdigit()),
                       key=lambda n: int(n[3:]))
    except OSError:
        return None
    for name in names:
        cur = _read_int(os.path.join(base, name, "cpufreq", "scaling_cur_freq"))
        mx = _read_int(os.path.join(base, name, "cpufreq", "cpuinfo_max_freq"))
        if cur is None and mx is None:
            continue
        cores.append({
            "core": int(name[3:]),
            "cur_mhz": None if cur is None else round(cur / 1000.0),
            "max_mhz": None if mx is None else round(mx / 1000.0),
        })
    return cores or None


def memory():
    text = _read("/proc/meminfo")
    if text is None:
        return None
    info = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            try:
                info[key] = int(fields[0]) * 1024
            except ValueError:
                pass
    total = info.get("MemTotal", 0)
    avail = info.get("MemAvailable", info.get("MemFree", 0))
    swap_total = info.get("SwapTotal", 0)
    swap_used = swap_total - info.get("SwapFree", 0)
    vm = _read("/proc/vmstat") or ""
    swaps = {}
    for line in vm.splitlines():
        key, _, val = line.partition(" ")
        if key in ("pswpin", "pswpout"):
            swaps[key] = int(val)
    return {
        "total": total,
        "available": avail,
        "used_percent": round(100.0 * (total - avail) / total, 1) if total else None,
        "swap_total": swap_total,
        "swap_used": swap_used,
        "swap_used_percent": round(100.0 * swap_used / swap_total, 1) if swap_total else 0.0,
        "pswpin": swaps.get("pswpin"),
        "pswpout": swaps.get("pswpout"),
    }


def _mount_of(path):
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def disks(root, paths):
    """Usage of the filesystems holding ``paths`` (label -> device path, relative to ``root``)."""
    out = []
    for label, rel in paths:
        full = os.path.join(root, rel.lstrip("/"))
        probe = full
        while not os.path.exists(probe):  # models dir may not exist yet: use its parent's fs
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        try:
            st = os.statvfs(probe)
        except OSError as exc:
            out.append({"label": label, "path": rel, "available": False, "error": str(exc)})
            continue
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        used = total - st.f_bfree * st.f_frsize
        out.append({
            "label": label,
            "path": rel,
            "mount": _mount_of(probe),
            "total": total,
            "free": free,
            "used_percent": round(100.0 * used / (used + free), 1) if used + free else None,
            "exists": os.path.exists(full),
        })
    return out


def temperatures():
    base = "/sys/class/thermal"
    zones = []
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith("thermal_zone"))
    except OSError:
        return zones
    for name in names:
        zdir = os.path.join(base, name)
        milli = _read_int(os.path.join(zdir, "temp"))
        if milli is None:
            continue
        trips = []
        for i in range(16):
            t = _read_int(os.path.join(zdir, "trip_point_%d_temp" % i))
            if t is None:
                break
            kind = (_read(os.path.join(zdir, "trip_point_%d_type" % i)) or "").strip()
            trips.append({"type": kind, "temp_c": t / 1000.0})
        zones.append({
            "zone": name,
            "type": (_read(os.path.join(zdir, "type")) or "").strip() or name,
            "temp_c": milli / 1000.0,
            "trips": trips,
        })
    return zones


def throttling(freq):
    """Throttle state: Raspberry Pi firmware flags when vcgencmd exists, plus cpufreq capping."""
    result = {"source": None, "raw": None, "now": {}, "since_boot": {}}
    vcgencmd = shutil.which("vcgencmd")
    if vcgencmd:
        try:
            out = subprocess.run([vcgencmd, "get_throttled"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True, timeout=3).stdout
            value = int(out.strip().split("=", 1)[1], 16)
            result["source"] = "vcgencmd"
            result["raw"] = hex(value)
            for bit, name in THROTTLE_BITS:
                result["now"][name] = bool(value & bit)
                result["since_boot"][name] = bool(value & (bit << 16))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    if freq:
        # Capped when a core runs well below its maximum while the CPU is in use is ambiguous
        # (governors idle down); report the numbers and let the evaluator combine with load.
        caps = [c for c in freq if c["cur_mhz"] and c["max_mhz"]]
        if caps:
            result["cur_min_mhz"] = min(c["cur_mhz"] for c in caps)
            result["cur_max_mhz"] = max(c["cur_mhz"] for c in caps)
            result["max_mhz"] = max(c["max_mhz"] for c in caps)
            if result["source"] is None:
                result["source"] = "cpufreq"
    return result


def uptime():
    text = _read("/proc/uptime")
    if not text:
        return None
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def service(unit):
    if not unit:
        return None
    systemctl = shutil.which("systemctl")
    if not systemctl:
        return {"unit": unit, "state": "not available", "detail": "systemctl not found on the device"}
    try:
        proc = subprocess.run([systemctl, "is-active", unit], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=5)
        state = proc.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError) as exc:
        return {"unit": unit, "state": "not available", "detail": str(exc)}
    if state in ("inactive", "unknown"):
        load = subprocess.run([systemctl, "show", "-p", "LoadState", "--value", unit],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=5).stdout.strip()
        if load == "not-found":
            state = "not-found"
    return {"unit": unit, "state": state}


def os_release():
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def runtime():
    ort = onnxruntime_info()
    mods = module_versions()
    return {
        "python": platform.python_version(),
        "python_path": sys.executable,
        "onnxruntime": ort["version"],
        "providers": ort["providers"],
        "onnxruntime_error": ort["error"],
        "modules": mods,
    }


def health(root, paths, unit=None, sample_s=0.25):
    """Everything `fieldkit health` shows, measured now."""
    freq = cpufreq()
    return {
        "time": time.time(),
        "hostname": socket.gethostname(),
        "os": os_release(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu(sample_s),
        "cpufreq": freq,
        "memory": memory(),
        "disks": disks(root, paths),
        "temperatures": temperatures(),
        "throttling": throttling(freq),
        "uptime_s": uptime(),
        "runtime": runtime(),
        "agent": {"version": AGENT_VERSION, "protocol": PROTOCOL_VERSION, "pid": os.getpid(), "root": root},
        "service": service(unit),
    }
