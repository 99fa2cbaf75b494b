"""A simulated device whose readings do not change.

The simulated devices of :mod:`fieldkit.sim` report this machine's real health, which moves with its
load: fine for a demo, useless for a screenshot that must come out the same every time. Here a device
root gets a readings document (:func:`write_fixed_readings`) and the agent, started with
:func:`fixed_env` in its environment, answers ``health`` from it (``fieldkit.agent.fixedreadings``).
Everything else — the link, the session, validation, the checks against the profile — is the real path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fieldkit.agent.fixedreadings import ENV
from fieldkit.agent.identity import SYSROOT_ENV

READINGS_FILE = "etc/fieldkit-sim/readings.json"
"""Where, under a simulated device root, its fixed readings live."""

GiB = 2**30


def fixed_readings(*, hostname: str = "press-1", cpu_percent: float = 12.0, memory_percent: float = 41.0,
                   temp_c: float | None = 47.5, disk_percent: float = 38.0, uptime_s: float = 273_600.0,
                   onnxruntime: str | None = "1.17.1", service: str | None = "active",
                   unit: str = "edge-inference.service") -> dict[str, Any]:
    """A Raspberry Pi 5 class device, in the shape the agent's ``health`` answers (four cores, 8 GiB,
    a 32 GB card), with the readings that matter to a screen as parameters; ``service``: the state
    of the profile's inference ``unit`` (None: a profile without one)."""
    total_mem = 8 * GiB
    disk_total = 29 * GiB
    disk_free = round(disk_total * (100 - disk_percent) / 100)
    cores = 4
    return {
        "hostname": hostname,
        "os": "Debian GNU/Linux 12 (bookworm)",
        "kernel": "6.6.31+rpt-rpi-2712",
        "machine": "aarch64",
        "cpu": {"count": cores, "percent": cpu_percent, "per_core": [cpu_percent] * cores,
                "load": [round(cores * cpu_percent / 100, 2), 0.4, 0.3], "raw_percent": cpu_percent,
                "excluded_self_percent": 0.0, "window_s": 1.0,
                "method": "fixed readings (fieldkit.sim.readings): not measured"},
        "cpufreq": [{"core": i, "cur_mhz": 2400, "max_mhz": 2400} for i in range(cores)],
        "memory": {"total": total_mem, "available": round(total_mem * (100 - memory_percent) / 100),
                   "used_percent": memory_percent, "swap_total": 512 * 2**20, "swap_used": 0,
                   "swap_used_percent": 0.0, "pswpin": 0, "pswpout": 0},
        "disks": [{"label": label, "path": path, "mount": "/", "total": disk_total, "free": disk_free,
                   "used_percent": disk_percent, "exists": True}
                  for label, path in (("root", "/"), ("models", "/var/lib/fieldkit/models"))],
        "temperatures": [] if temp_c is None else [
            {"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": temp_c,
             "trips": [{"type": "passive", "temp_c": 80.0}, {"type": "critical", "temp_c": 90.0}]}],
        "throttling": {"source": "vcgencmd", "raw": "0x0",
                       "now": {k: False for k in ("under_voltage", "freq_capped", "throttled", "soft_temp_limit")},
                       "since_boot": {k: False for k in ("under_voltage", "freq_capped", "throttled",
                                                         "soft_temp_limit")}},
        "uptime_s": uptime_s,
        "runtime": {"python": "3.11.2", "python_path": "/usr/bin/python3", "onnxruntime": onnxruntime,
                    "providers": ["CPUExecutionProvider"] if onnxruntime else [],
                    "onnxruntime_error": None if onnxruntime else "onnxruntime is not installed",
                    "modules": {"psutil": None, "onnxruntime": onnxruntime, "numpy": "1.26.4",
                                "cryptography": None}},
        "service": None if service is None else {"unit": unit, "state": service},
    }


def write_fixed_readings(root: Path, readings: dict[str, Any] | None = None, **kw: Any) -> Path:
    """Give the device root at ``root`` fixed readings (``readings``, or :func:`fixed_readings` with
    ``kw``); returns the file. Its agent uses them when started with :func:`fixed_env`."""
    path = Path(root) / READINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(readings if readings is not None else fixed_readings(**kw), indent=1))
    return path


PI5_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
CPU implementer\t: 0x41
CPU part\t: 0xd0b

Revision\t: d04170
Serial\t\t: 5f2a81c0d3e4b1a9
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def write_fake_sysroot(path: Path) -> Path:
    """A system tree that says "Raspberry Pi 5 Model B, 8 GB" to the agent's ``identity`` operation
    (``$FIELDKIT_AGENT_SYSROOT``), so the hardware a fixed device reports is not this machine's."""
    path = Path(path)
    files = {
        "proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\0",
        "proc/device-tree/compatible": "raspberrypi,5-model-b\0brcm,bcm2712\0",
        "proc/cpuinfo": PI5_CPUINFO,
        "proc/meminfo": "MemTotal:        8245616 kB\n",
        "proc/sys/kernel/osrelease": "6.6.31+rpt-rpi-2712\n",
        "proc/sys/kernel/hostname": "press-1\n",
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    }
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def fixed_env(sysroot: Path | None = None) -> dict[str, str]:
    """The environment that makes an agent answer ``health`` from its root's fixed readings (a
    ``local:`` agent inherits it from this process); with ``sysroot`` (:func:`write_fake_sysroot`)
    its hardware identity is fixed too."""
    env = {ENV: READINGS_FILE}
    if sysroot is not None:
        env[SYSROOT_ENV] = str(sysroot)
    return env
