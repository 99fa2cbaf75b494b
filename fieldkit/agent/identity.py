"""What hardware is this? The ``identity`` operation (stdlib only, runs on Python 3.6).

Read-only: the device-tree model and compatible list (ARM boards), DMI (x86), ``/proc/cpuinfo``,
``/proc/meminfo``, ``/etc/os-release``, the kernel's hostname and release, Jetson's
``/etc/nv_tegra_release`` and ``nvpmodel -q``, and the Raspberry Pi revision code decoded as the
official documentation describes it (``NOQuuuWuFMMMCCCCPPPPTTTTTTTTRRRR``, old-style codes
``0002``..``0015`` from a table).

Every file is read relative to a system root: ``/`` on a device, a fake tree in tests and simulations
(``$FIELDKIT_AGENT_SYSROOT``). Reads are bounded (a huge or endless file is cut), bytes are decoded
leniently and control characters (device-tree strings end in NUL) are removed; anything missing or
unreadable is ``None``. Nothing here raises for what a device's files contain.
"""

import os
import platform
import re
import select
import socket
import subprocess
import sys
import time

SYSROOT_ENV = "FIELDKIT_AGENT_SYSROOT"
READ_LIMIT = 64 * 1024  # bytes read from any one file
CPUINFO_LIMIT = 256 * 1024  # /proc/cpuinfo of a many-core machine is longer
TEXT_LIMIT = 256  # characters kept of any one value
MAX_COMPATIBLE = 16
NVPMODEL_TIMEOUT_S = 3.0

# ---- Raspberry Pi revision codes (raspberrypi/documentation: computers/raspberry-pi/revision-codes) ----
PI_MEMORY_MB = {0: 256, 1: 512, 2: 1024, 3: 2048, 4: 4096, 5: 8192, 6: 16384}
PI_MANUFACTURERS = {0: "Sony UK", 1: "Egoman", 2: "Embest", 3: "Sony Japan", 4: "Embest", 5: "Stadium"}
PI_PROCESSORS = {0: "BCM2835", 1: "BCM2836", 2: "BCM2837", 3: "BCM2711", 4: "BCM2712"}
PI_TYPES = {
    0x00: "A", 0x01: "B", 0x02: "A+", 0x03: "B+", 0x04: "2B", 0x05: "Alpha (early prototype)", 0x06: "CM1",
    0x08: "3B", 0x09: "Zero", 0x0a: "CM3", 0x0c: "Zero W", 0x0d: "3B+", 0x0e: "3A+", 0x0f: "Internal use only",
    0x10: "CM3+", 0x11: "4B", 0x12: "Zero 2 W", 0x13: "400", 0x14: "CM4", 0x15: "CM4S",
    0x16: "Internal use only", 0x17: "5", 0x18: "CM5", 0x19: "500/500+", 0x1a: "CM5 Lite", 0x1b: "CM0",
}
# code -> (type, revision, memory MB, manufacturer); all BCM2835
PI_OLD_STYLE = {
    0x0002: ("B", "1.0", 256, "Egoman"), 0x0003: ("B", "1.0", 256, "Egoman"),
    0x0004: ("B", "2.0", 256, "Sony UK"), 0x0005: ("B", "2.0", 256, "Qisda"),
    0x0006: ("B", "2.0", 256, "Egoman"), 0x0007: ("A", "2.0", 256, "Egoman"),
    0x0008: ("A", "2.0", 256, "Sony UK"), 0x0009: ("A", "2.0", 256, "Qisda"),
    0x000d: ("B", "2.0", 512, "Egoman"), 0x000e: ("B", "2.0", 512, "Sony UK"),
    0x000f: ("B", "2.0", 512, "Egoman"), 0x0010: ("B+", "1.2", 512, "Sony UK"),
    0x0011: ("CM1", "1.0", 512, "Sony UK"), 0x0012: ("A+", "1.1", 256, "Sony UK"),
    0x0013: ("B+", "1.2", 512, "Embest"), 0x0014: ("CM1", "1.0", 512, "Embest"),
    0x0015: ("A+", "1.1", None, "Embest"),  # 256 MB or 512 MB
}

# ---- Jetson: L4T release -> JetPack (NVIDIA's JetPack archive; as jetson-stats and jetson-containers map it) ----
JETPACK = {
    "36.4.4": "6.2.1", "36.4.3": "6.2", "36.4.2": "6.1.1", "36.4.0": "6.1", "36.3.0": "6.0", "36.2.0": "6.0 DP",
    "35.6.1": "5.1.5", "35.6.0": "5.1.4", "35.5.0": "5.1.3", "35.4.1": "5.1.2", "35.3.1": "5.1.1",
    "35.2.1": "5.1", "35.1.0": "5.0.2",
    "32.7.6": "4.6.6", "32.7.5": "4.6.5", "32.7.4": "4.6.4", "32.7.3": "4.6.3", "32.7.2": "4.6.2",
    "32.7.1": "4.6.1", "32.6.1": "4.6", "32.5.2": "4.5.1", "32.5.1": "4.5.1", "32.5.0": "4.5",
    "32.4.4": "4.4.1", "32.4.3": "4.4", "32.3.1": "4.3",
}
_L4T = re.compile(r"^#\s*R(\d{1,3})\s*\(release\),\s*REVISION:\s*(\d{1,3})(?:\.(\d{1,3}))?(?![\d.])")
_BOARD = re.compile(r"BOARD:\s*([A-Za-z0-9_.-]{1,64})")

# ---- CPU cores named by /proc/cpuinfo "CPU part" (Arm Ltd., implementer 0x41) ----
ARM_PARTS = {
    0xb76: "ARM1176", 0xc07: "Cortex-A7", 0xc08: "Cortex-A8", 0xc09: "Cortex-A9", 0xc0f: "Cortex-A15",
    0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57", 0xd08: "Cortex-A72",
    0xd09: "Cortex-A73", 0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76", 0xd0c: "Neoverse-N1", 0xd0d: "Cortex-A77",
    0xd41: "Cortex-A78", 0xd42: "Cortex-A78AE", 0xd4b: "Cortex-A78C",
}

# DMI strings firmware leaves when the vendor did not fill them in
DMI_PLACEHOLDERS = {
    "", "to be filled by o.e.m.", "to be filled by oem", "default string", "system product name",
    "system manufacturer", "system serial number", "not specified", "not applicable", "none", "n/a", "na",
    "--", "0", "0123456789", "123456789", "oem", "o.e.m.", "unknown", "invalid", "chassis serial number",
    "base board serial number", "type1productconfigid",
}
VIRTUAL_VENDORS = ("qemu", "vmware", "innotek", "xen", "bochs", "parallels", "red hat", "nutanix", "amazon ec2")
VIRTUAL_PRODUCTS = ("kvm", "virtualbox", "virtual machine", "vmware", "hvm domu", "bochs", "standard pc (")

# cpuinfo "Hardware" of Raspberry Pi kernels (old kernels had no device tree to say "Raspberry Pi")
PI_HARDWARE = ("BCM2708", "BCM2709", "BCM2710", "BCM2835", "BCM2836", "BCM2837", "BCM2711", "BCM2712")

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def sysroot():
    """The root the identity is read from: ``$FIELDKIT_AGENT_SYSROOT`` or ``/``."""
    return os.environ.get(SYSROOT_ENV) or "/"


# ---- bounded, lenient reading ------------------------------------------------------------------------
def read_bytes(root, rel, limit=READ_LIMIT):
    """At most ``limit`` bytes of ``root/rel`` (a FIFO or a device is not opened), or None."""
    path = os.path.join(root, rel.lstrip("/"))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except (OSError, ValueError):
        return None
    try:
        import stat
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return None
        chunks = []
        got = 0
        while got < limit:
            chunk = os.read(fd, min(65536, limit - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def clean(value, limit=TEXT_LIMIT):
    """One line of printable text from bytes or str: NUL and other control characters removed,
    whitespace collapsed, cut to ``limit`` characters; None when nothing is left."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = _CTRL.sub(" ", value.replace("\x00", " "))
    value = " ".join(value.split())
    if not value:
        return None
    return value[:limit]


def read_text(root, rel, limit=READ_LIMIT):
    data = read_bytes(root, rel, limit)
    return None if data is None else data.decode("utf-8", "replace")


def read_value(root, rel):
    """A one-value file (sysfs, device tree): cleaned text or None."""
    return clean(read_bytes(root, rel, 4096))


def read_string_list(root, rel):
    """A device-tree string list (NUL-separated, NUL-terminated): up to 16 cleaned strings."""
    data = read_bytes(root, rel, 4096)
    if data is None:
        return []
    out = []
    for part in data.split(b"\x00"):
        text = clean(part)
        if text:
            out.append(text)
        if len(out) >= MAX_COMPATIBLE:
            break
    return out


# ---- parsers (pure: they take text and never raise) ------------------------------------------------------
def parse_cpuinfo(text):
    """``/proc/cpuinfo`` -> ``{"fields": {key: first value}, "processors": n, "flags": set}``.

    Keys are lower-case; a line without a colon is ignored; per-processor blocks repeat keys, the
    first value is kept (the board lines Hardware/Revision/Serial/Model come once, at the end)."""
    fields = {}
    processors = 0
    flags = set()
    if not isinstance(text, str):
        return {"fields": fields, "processors": 0, "flags": flags}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = " ".join(key.split()).lower()[:64]
        if not key:
            continue
        if key == "processor":
            processors += 1
            continue
        if key in ("flags", "features") and not flags:
            flags = set(_CTRL.sub(" ", value).split()[:1024])
        value = clean(value)
        if value is not None and key not in fields and len(fields) < 256:
            fields[key] = value
    return {"fields": fields, "processors": processors, "flags": flags}


def parse_hex(text, limit=0xFFFFFFFF):
    """A hex number such as ``c03115`` or ``0x1000002``; None when it is not one or out of range."""
    if not isinstance(text, str):
        return None
    text = text.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if not text or len(text) > 8 or any(c not in "0123456789abcdef" for c in text):
        return None
    value = int(text, 16)
    return value if value <= limit else None


def decode_pi_revision(text):
    """A Raspberry Pi revision code decoded (new-style bit fields, or the old-style table), or None.

    ``{"code", "style", "type", "model", "revision", "memory_mb", "manufacturer", "processor",
    "warranty_voided", "overvoltage_allowed"?, "otp_program_allowed"?, "otp_read_allowed"?}``;
    ``model`` reads as Raspberry Pi names boards ("Raspberry Pi 4 Model B")."""
    code = parse_hex(text)
    if code is None:
        return None
    if code & (1 << 23):  # F: new-style
        kind = (code >> 4) & 0xFF
        mem = (code >> 20) & 0x7
        maker = (code >> 16) & 0xF
        proc = (code >> 12) & 0xF
        type_name = PI_TYPES.get(kind)
        return {
            "code": "%x" % code,
            "style": "new",
            "type": type_name or "unknown type 0x%02x" % kind,
            "model": pi_model_name(type_name) if type_name else None,
            "revision": "1.%d" % (code & 0xF),
            "memory_mb": PI_MEMORY_MB.get(mem),
            "manufacturer": PI_MANUFACTURERS.get(maker),
            "processor": PI_PROCESSORS.get(proc),
            "warranty_voided": bool(code & (1 << 25)),
            "overvoltage_allowed": not bool(code & (1 << 31)),
            "otp_program_allowed": not bool(code & (1 << 30)),
            "otp_read_allowed": not bool(code & (1 << 29)),
        }
    warranty = bool(code & (1 << 24))  # old style: a "1000" prefix marks an over-volted board
    old = PI_OLD_STYLE.get(code & 0xFFFFFF)
    if old is None:
        return None
    kind, revision, memory, maker = old
    return {
        "code": "%04x" % code,
        "style": "old",
        "type": kind,
        "model": pi_model_name(kind),
        "revision": revision,
        "memory_mb": memory,
        "manufacturer": maker,
        "processor": "BCM2835",
        "warranty_voided": warranty,
    }


def pi_model_name(kind):
    """Board type as the revision-code table writes it -> the name Raspberry Pi uses."""
    if kind is None:
        return None
    names = {
        "A": "Raspberry Pi Model A", "B": "Raspberry Pi Model B", "A+": "Raspberry Pi Model A+",
        "B+": "Raspberry Pi Model B+", "2B": "Raspberry Pi 2 Model B", "3B": "Raspberry Pi 3 Model B",
        "3B+": "Raspberry Pi 3 Model B+", "3A+": "Raspberry Pi 3 Model A+", "4B": "Raspberry Pi 4 Model B",
        "5": "Raspberry Pi 5", "400": "Raspberry Pi 400", "500/500+": "Raspberry Pi 500",
        "Zero": "Raspberry Pi Zero", "Zero W": "Raspberry Pi Zero W", "Zero 2 W": "Raspberry Pi Zero 2 W",
        "CM1": "Raspberry Pi Compute Module 1", "CM3": "Raspberry Pi Compute Module 3",
        "CM3+": "Raspberry Pi Compute Module 3+", "CM4": "Raspberry Pi Compute Module 4",
        "CM4S": "Raspberry Pi Compute Module 4S", "CM5": "Raspberry Pi Compute Module 5",
        "CM5 Lite": "Raspberry Pi Compute Module 5 Lite", "CM0": "Raspberry Pi Compute Module 0",
    }
    return names.get(kind, "Raspberry Pi " + kind)


def parse_nv_tegra_release(text):
    """The first line of ``/etc/nv_tegra_release`` -> ``{"l4t", "jetpack", "board", "line"}`` or None."""
    if not isinstance(text, str):
        return None
    line = clean(text.splitlines()[0] if text.splitlines() else "")
    if not line:
        return None
    m = _L4T.match(line)
    if not m:
        return None
    major, minor, micro = m.group(1), m.group(2), m.group(3) or "0"
    l4t = "%d.%d.%d" % (int(major), int(minor), int(micro))
    board = _BOARD.search(line)
    return {"l4t": l4t, "jetpack": JETPACK.get(l4t), "board": board.group(1) if board else None, "line": line}


def parse_nvpmodel(text):
    """``nvpmodel -q`` output -> ``(mode name, mode id)``; either may be None."""
    if not isinstance(text, str):
        return None, None
    lines = [ln.strip() for ln in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("NV Power Mode:"):
            name = clean(line.split(":", 1)[1], 64)
            mode_id = None
            if i + 1 < len(lines) and lines[i + 1].isdigit() and len(lines[i + 1]) <= 4:
                mode_id = int(lines[i + 1])
            return name, mode_id
    return None, None


def parse_os_release(text):
    if not isinstance(text, str):
        return None
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return clean(line.split("=", 1)[1].strip().strip("\"'"))
    return None


def parse_meminfo_total(text):
    """``MemTotal`` of ``/proc/meminfo`` in bytes, or None."""
    if not isinstance(text, str):
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit() and len(parts[1]) <= 15:
                return int(parts[1]) * 1024
    return None


def dmi_value(text):
    """A DMI string, or None for the placeholders firmware leaves ("To be filled by O.E.M.")."""
    value = clean(text)
    if value is None or value.lower() in DMI_PLACEHOLDERS:
        return None
    return value


def soc_of(compatible, hardware):
    """The SoC from the device-tree compatible list (its last entry, ``brcm,bcm2711`` -> BCM2711;
    ``nvidia,tegra234`` -> tegra234), else cpuinfo's Hardware line."""
    if compatible:
        last = compatible[-1]
        name = last.split(",", 1)[-1]
        if last.startswith("brcm,"):
            return name.upper()
        return name
    return hardware


def arm_core(fields):
    if fields.get("cpu implementer", "").lower() != "0x41":
        return None
    part = parse_hex(fields.get("cpu part"), 0xFFF)
    return ARM_PARTS.get(part) if part is not None else None


# ---- running nvpmodel ----------------------------------------------------------------------------------
def find_program(root, name):
    """``name`` in the usual system directories under ``root`` (``/`` also searches PATH)."""
    for d in ("usr/sbin", "usr/bin", "sbin", "bin", "usr/local/sbin", "usr/local/bin"):
        path = os.path.join(root, d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    if root in ("/", ""):
        import shutil
        return shutil.which(name)
    return None


def run_bounded(cmd, timeout=NVPMODEL_TIMEOUT_S, limit=READ_LIMIT):
    """Run ``cmd`` with no input; its first ``limit`` bytes of output within ``timeout`` seconds
    (it is killed after), or None when it cannot be started."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, close_fds=True)
    except (OSError, ValueError):
        return None
    deadline = time.monotonic() + timeout
    out = []
    got = 0
    try:
        fd = proc.stdout.fileno()
        while got < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, min(65536, limit - got))
            if not chunk:
                break
            out.append(chunk)
            got += len(chunk)
    except (OSError, ValueError):
        pass
    finally:
        try:
            proc.wait(timeout=max(0.05, min(0.5, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return b"".join(out).decode("utf-8", "replace")


# ---- the operation -----------------------------------------------------------------------------------------
def identity(root=None, run_programs=True):
    """Everything the device says about its hardware and system. Never raises for file contents."""
    root = root or sysroot()
    native = os.path.realpath(root) == "/"
    cpu = parse_cpuinfo(read_text(root, "proc/cpuinfo", CPUINFO_LIMIT))
    fields = cpu["fields"]

    dt_model = read_value(root, "proc/device-tree/model") or read_value(root, "sys/firmware/devicetree/base/model")
    compatible = (read_string_list(root, "proc/device-tree/compatible")
                  or read_string_list(root, "sys/firmware/devicetree/base/compatible"))
    dmi = "sys/class/dmi/id/"
    vendor = dmi_value(read_bytes(root, dmi + "sys_vendor", 4096))
    product = dmi_value(read_bytes(root, dmi + "product_name", 4096))
    board_vendor = dmi_value(read_bytes(root, dmi + "board_vendor", 4096))
    board_name = dmi_value(read_bytes(root, dmi + "board_name", 4096))

    model, source = None, None
    if dt_model:
        model, source = dt_model, "device-tree"
    elif product:
        model = product if not vendor or product.lower().startswith(vendor.lower()) else vendor + " " + product
        source = "dmi"
    elif fields.get("model") and not fields["model"].isdigit():  # Pi kernels: cpuinfo "Model" (x86: a number)
        model, source = fields["model"], "cpuinfo"

    serial, serial_source = None, None
    for value, where in ((read_value(root, "proc/device-tree/serial-number"), "device-tree"),
                         (fields.get("serial"), "cpuinfo"),
                         (dmi_value(read_bytes(root, dmi + "product_serial", 4096)), "dmi")):
        if value and value.strip("0"):
            serial, serial_source = value, where
            break

    pi = None
    is_pi = (any(c.startswith("raspberrypi,") for c in compatible)
             or (model or "").startswith("Raspberry Pi")
             or (fields.get("hardware") or "").upper() in PI_HARDWARE)
    if is_pi and fields.get("revision"):
        pi = decode_pi_revision(fields["revision"])

    jetson = None
    tegra = parse_nv_tegra_release(read_text(root, "etc/nv_tegra_release", 4096))
    if tegra is not None or any(c.startswith("nvidia,") for c in compatible):
        jetson = {"l4t": None, "jetpack": None, "board": None, "release_line": None,
                  "power_mode": None, "power_mode_id": None}
        if tegra is not None:
            jetson.update(l4t=tegra["l4t"], jetpack=tegra["jetpack"], board=tegra["board"],
                          release_line=tegra["line"])
        nvpmodel = find_program(root, "nvpmodel") if run_programs else None
        if nvpmodel:
            out = run_bounded([nvpmodel, "-q"], timeout=NVPMODEL_TIMEOUT_S)
            jetson["power_mode"], jetson["power_mode_id"] = parse_nvpmodel(out)

    cpu_name = fields.get("model name") if not (fields.get("model name") or "").startswith("ARMv") else None
    cpu_name = cpu_name or arm_core(fields) or fields.get("model name") or fields.get("cpu model")
    virtual = None
    if "hypervisor" in cpu["flags"]:
        virtual = True
    elif vendor or product:
        low_v, low_p = (vendor or "").lower(), (product or "").lower()
        virtual = (any(v in low_v for v in VIRTUAL_VENDORS) or any(p in low_p for p in VIRTUAL_PRODUCTS)
                   or (low_v.startswith("microsoft") and "virtual" in low_p))
    elif compatible or fields:
        virtual = False

    kernel = read_value(root, "proc/sys/kernel/osrelease") or (platform.release() if native else None)
    hostname = read_value(root, "proc/sys/kernel/hostname") or (socket.gethostname() if native else None)
    return {
        "model": model,
        "model_source": source,
        "vendor": vendor,
        "product": product,
        "board": " ".join(x for x in (board_vendor, board_name) if x) or None,
        "compatible": compatible,
        "soc": soc_of(compatible, fields.get("hardware")),
        "cpu": cpu_name,
        "cpu_cores": cpu["processors"] or None,
        "machine": platform.machine() if native else None,
        "memory_bytes": parse_meminfo_total(read_text(root, "proc/meminfo")),
        "serial": serial,
        "serial_source": serial_source,
        "revision": fields.get("revision"),
        "raspberry_pi": pi,
        "jetson": jetson,
        "virtual": virtual,
        "os": parse_os_release(read_text(root, "etc/os-release")),
        "kernel": clean(kernel),
        "hostname": clean(hostname),
        "python": sys.version.split()[0],
        "sysroot": None if native else root,
    }


def identity_op(req=None):
    """The ``identity`` operation: read-only, so never gated; the root comes from the agent's
    environment, never from the request."""
    return identity()
