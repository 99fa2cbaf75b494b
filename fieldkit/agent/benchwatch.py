"""What happens around the timed loop: device readings and cancel signals (stdlib, Python 3.6 syntax).

:class:`Sampler` is a thread that reads /proc/meminfo, thermal zones and cpufreq every ~200 ms and
watches the signal wakeup fd, so a cancel signal (:func:`install_signals`, :class:`CancelState`)
stops an inference in progress through onnxruntime's ``RunOptions.terminate``. The one-off readings
(swap counters, peak RSS, Raspberry Pi throttle flags) are taken before and after the run.
"""

import os
import select
import signal
import threading
from typing import Any, Dict, List, Optional, Tuple

from fieldkit.agent.probes import THROTTLE_BITS, _read, _read_int

CANCEL_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


class Cancelled(Exception):
    pass


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
        try:
            old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        except TypeError:  # Python 3.6 (JetPack 4): no warn_on_full_buffer
            old_wakeup = signal.set_wakeup_fd(wake_w)
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
