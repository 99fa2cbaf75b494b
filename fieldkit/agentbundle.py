"""``fieldkit agent bundle``: what a device needs to serve fieldkit on its serial port, with no network
and no pip (carried in on a USB stick).

The bundle is a directory::

    install.sh                              POSIX sh: checks SHA256SUMS and Python, installs, sets up the layout
    fieldkit-agent.pyz                      the agent zipapp (fieldkit.link.zipapp: the same bytes SSH pushes,
                                            with the pure-Python ecdsa verifier inside)
    systemd/fieldkit-agent@.service         the agent on a serial port (enable as fieldkit-agent@ttyS0)
    systemd/fieldkit-agent-recover.service  boot-time recovery of interrupted activations
    keys/trust/key-<hash>.pem               release keys to trust (--release-key), named as the agent names them
    keys/operators/key-<hash>.pem           operator keys (--operator-key)
    README.txt                              what a technician copies where
    SHA256SUMS                              every other file (``sha256sum -c`` format)

``install.sh`` runs with the device's own ``/bin/sh``, coreutils and Python (it refuses a Python older
than the agent needs, naming it). Where it puts things (``--root DIR`` prefixes every path)::

    usr/local/lib/fieldkit/fieldkit-agent.pyz  0644 root
    usr/local/bin/fieldkit-agent               0755 root   sh wrapper: exec PYTHON fieldkit-agent.pyz "$@"
    etc/systemd/system/*.service               0644 root
    etc/fieldkit/                              0755 root:fieldkit
    etc/fieldkit/trust/                        2775 root:fieldkit  the agent adds/removes release keys (anchors)
    etc/fieldkit/operators/                    2755 root:fieldkit  root only: a key here may change the device
    var/lib/fieldkit/{,models/,staging/}       2775 root:fieldkit  the agent's models, transfers and journal
    var/lib/fieldkit/journal.jsonl             0664 root:fieldkit  (created empty when missing)

Installed on the device itself (no ``--root``) it must run as root; it creates the ``fieldkit`` group
(``groupadd``, or busybox ``addgroup``) and reloads/enables the units when systemd runs. With ``--root
DIR`` it never touches the running system's accounts or services: the group is looked up in
``DIR/etc/group`` and, when it is missing there (or the script does not run as root), ownership is left
as it is and the script says so (modes, including setgid, are always set).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from fieldkit.errors import ConfigError

AGENT_FILE = "fieldkit-agent.pyz"
SERIAL_UNIT = "fieldkit-agent@.service"
RECOVER_UNIT = "fieldkit-agent-recover.service"
MIN_DEVICE_PYTHON = (3, 6)  # the agent runs on Python 3.6 (tests run it under 3.6..3.13; the SSH link asks for >= 3.6)
_MARKER = "fieldkit agent bundle"


@dataclass
class KeyFile:
    kind: str          # "trust" (release key) or "operators"
    fingerprint: str
    file: str          # path inside the bundle


@dataclass
class AgentBundle:
    out: Path
    agent_sha256: str
    files: dict[str, int] = field(default_factory=dict)  # bundle path -> size
    keys: list[KeyFile] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(self.files.values())

    def as_dict(self) -> dict:
        return {"out": str(self.out), "agent_sha256": self.agent_sha256, "size": self.size,
                "files": dict(self.files),
                "keys": [{"kind": k.kind, "fingerprint": k.fingerprint, "file": k.file} for k in self.keys]}


def serial_unit() -> str:
    return f"""\
# fieldkit agent on a serial port ({_MARKER}). Installed by install.sh as
# /etc/systemd/system/{SERIAL_UNIT}; enable it per port:
#   systemctl enable --now fieldkit-agent@ttyS0.service
# The baud rate comes from FIELDKIT_BAUD (default 115200), e.g. in /etc/fieldkit/agent.env.
# Over serial only an operator whose key is in /etc/fieldkit/operators may change the device: bundle it
# (--operator-key) or add it over SSH (`fieldkit anchors add DEVICE operator.pub.pem --operator`; yours:
# `fieldkit init --show-public-key`).
[Unit]
Description=fieldkit agent on serial port %I
After=dev-%i.device
BindsTo=dev-%i.device
# A login prompt on the same port would eat the frames: starting the agent stops that getty.
Conflicts=serial-getty@%i.service

[Service]
Type=simple
Environment=FIELDKIT_BAUD=115200
# The agent restarts its own unit when `fieldkit agent upgrade` replaced it.
Environment=FIELDKIT_AGENT_UNIT=%n
EnvironmentFile=-/etc/fieldkit/agent.env
ExecStart=/usr/local/bin/fieldkit-agent serve --serial /dev/%I --baud ${{FIELDKIT_BAUD}} --root /
Restart=always
RestartSec=2
# Files the agent writes stay writable for the fieldkit group (technicians' SSH sessions).
UMask=0002
# The agent writes models, staging and its journal under /var/lib/fieldkit, the release keys
# (fieldkit anchors) under /etc/fieldkit/trust, operator keys under /etc/fieldkit/operators and
# itself (fieldkit agent upgrade) under /usr/local/lib/fieldkit; the rest of /usr, /boot and /etc is read-only.
ProtectSystem=full
ReadWritePaths=-/etc/fieldkit -/var/lib/fieldkit -/usr/local/lib/fieldkit
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
"""


def recover_unit(inference_service: str) -> str:
    return f"""\
# At boot, before the inference service starts, finish or undo any model activation that a crash or
# power loss interrupted ({_MARKER}), so the service starts on a complete, verified, committed model.
# Installed by install.sh as /etc/systemd/system/{RECOVER_UNIT} and enabled. An upgrade of the
# installed agent (fieldkit agent upgrade) that no agent is trying any more is undone too.
# It does not restart services itself (the inference service has not started yet at this point).
[Unit]
Description=fieldkit: recover interrupted model activations
DefaultDependencies=no
After=local-fs.target
Before={inference_service}
RequiresMountsFor=/var/lib/fieldkit

[Service]
Type=oneshot
ExecStart=/usr/local/bin/fieldkit-agent recover --root /
RemainAfterExit=yes
UMask=0002
ProtectSystem=full
ReadWritePaths=-/etc/fieldkit -/var/lib/fieldkit -/usr/local/lib/fieldkit
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
# Wanted, not Required: a recovery that reports a problem (exit status 1) must not keep the service down.
WantedBy={inference_service}
"""


INSTALL_SH = r"""#!/bin/sh
# Install the fieldkit device agent from this directory: no network, no pip (__MARKER__).
#
#   sudo sh install.sh [--serial-port ttyS0] [--python /usr/bin/python3.11]   on the device
#   sh install.sh --root DIR                                                  into a directory tree
#
# --root DIR     install under DIR instead of / (an image being built, tests). The running system's
#                accounts and services are left alone: the fieldkit group is looked up in DIR/etc/group,
#                and when it is missing there (or this does not run as root) ownership is left as is.
# --python PY    the Python the agent runs with (default: python3 on PATH); needs >= __MINPY__
# --serial-port  enable and start the agent on this port (ttyS0, ttyUSB0, ...; systemd only)
# --no-enable    copy the units but do not enable them
# Running it again upgrades the agent in place; keys and models already on the device are kept.
set -eu

ROOT=/
PY=
PORT=
ENABLE=1
GROUP=fieldkit

say() { printf '%s\n' "install.sh: $*"; }
die() { printf '%s\n' "install.sh: $1" >&2; exit "${2:-1}"; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory" 2; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a path" 2; PY=$2; shift 2 ;;
        --python=*) PY=${1#--python=}; shift ;;
        --serial-port) [ $# -ge 2 ] || die "--serial-port needs a port name" 2; PORT=${2#/dev/}; shift 2 ;;
        --serial-port=*) PORT=${1#--serial-port=}; PORT=${PORT#/dev/}; shift ;;
        --no-enable) ENABLE=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" 2 ;;
    esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
case "$ROOT" in
    /) R= ;;
    /*) R=${ROOT%/} ;;
    *) [ -d "$ROOT" ] || mkdir -p "$ROOT"; R=$(cd "$ROOT" && pwd) ;;
esac
[ -z "$R" ] || [ -d "$R" ] || mkdir -p "$R" || die "cannot create $R"
IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
if [ -z "$R" ] && [ "$IS_ROOT" = 0 ]; then
    die "installing on this device needs root: sudo sh $0 (or --root DIR to fill a directory tree)" 2
fi

# 1. The Python the agent runs with (under --root without --python: the image's python3 on PATH).
if [ -n "$PY" ] || [ -z "$R" ]; then WRAP_PY=; else WRAP_PY="/usr/bin/env python3"; fi
if [ -z "$PY" ]; then
    PY=$(command -v python3 || true)
    [ -n "$PY" ] || die "no python3 on PATH: install Python >= __MINPY__ from the device image, or give --python PATH"
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (__MINPY_TUPLE__) else 1)' 2>/dev/null || \
    die "$PY is too old or not a Python ($("$PY" --version 2>&1 || true)): the agent needs Python >= __MINPY__ (give another with --python PATH)"

# 2. The bundle is complete and unchanged (sha256sum from coreutils or busybox; Python otherwise).
cd "$HERE"
if command -v sha256sum >/dev/null 2>&1; then
    if ! sha256sum -c SHA256SUMS >/dev/null 2>&1; then
        sha256sum -c SHA256SUMS 2>&1 | grep -v ': OK$' >&2 || true
        die "the bundle does not match SHA256SUMS: it is damaged or was changed; copy it again"
    fi
else
    "$PY" - <<'EOF' || die "the bundle does not match SHA256SUMS: it is damaged or was changed; copy it again"
import hashlib, sys
bad = 0
for line in open("SHA256SUMS"):
    digest, name = line.rstrip("\n").split("  ", 1)
    try:
        ok = hashlib.sha256(open(name, "rb").read()).hexdigest() == digest
    except OSError:
        ok = False
    if not ok:
        sys.stderr.write("%s: FAILED\n" % name)
        bad = 1
sys.exit(bad)
EOF
fi
"$PY" "$HERE/__AGENT__" version >/dev/null || die "$PY cannot run the agent ($HERE/__AGENT__)"

# 3. The fieldkit group and the owner of the layout.
OWNER=
NOTE=
if [ -z "$R" ]; then
    if ! grep -q "^$GROUP:" /etc/group 2>/dev/null && ! getent group "$GROUP" >/dev/null 2>&1; then
        if command -v groupadd >/dev/null 2>&1; then groupadd --system "$GROUP"
        elif command -v addgroup >/dev/null 2>&1; then addgroup -S "$GROUP" 2>/dev/null || addgroup --system "$GROUP"
        else die "cannot create the group $GROUP (no groupadd or addgroup): create it, then run this again"
        fi
        say "created group $GROUP"
    fi
    OWNER="root:$GROUP"
else
    GID=$(awk -F: -v g="$GROUP" '$1 == g { print $3; exit }' "$R/etc/group" 2>/dev/null || true)
    if [ -z "$GID" ]; then
        NOTE="no group $GROUP in $R/etc/group: ownership left as it is (add the group, e.g. groupadd --prefix $R --system $GROUP, and run this again)"
    elif [ "$IS_ROOT" = 0 ]; then
        NOTE="not running as root: ownership left as it is (run this again as root for root:$GROUP)"
    else
        OWNER="0:$GID"
    fi
fi

own() { [ -z "$OWNER" ] || chown "$OWNER" "$@"; }
rootown() { [ "$IS_ROOT" = 0 ] || chown 0:0 "$@"; }
layout_dir() {  # layout_dir MODE PATH: owned by root:fieldkit (chown before chmod: chown may clear setgid)
    mkdir -p "$R/$2"
    own "$R/$2"
    chmod "$1" "$R/$2"
}
put() {  # put MODE SRC DEST: copy atomically (a running agent keeps its open file)
    mkdir -p "$(dirname "$R/$3")"
    cp "$2" "$R/$3.tmp.$$"
    chmod "$1" "$R/$3.tmp.$$"
    rootown "$R/$3.tmp.$$"
    mv -f "$R/$3.tmp.$$" "$R/$3"
}

# 4. The device layout (docs/releases.md, "Device layout").
layout_dir 0755 etc/fieldkit
layout_dir 2775 etc/fieldkit/trust
layout_dir 2755 etc/fieldkit/operators
layout_dir 2775 var/lib/fieldkit
layout_dir 2775 var/lib/fieldkit/models
layout_dir 2775 var/lib/fieldkit/staging
J="$R/var/lib/fieldkit/journal.jsonl"  # every agent (serial service, SSH sessions) appends to it
[ -e "$J" ] || [ -L "$J" ] || : > "$J"
if [ -f "$J" ] && [ ! -L "$J" ]; then
    own "$J"
    chmod 0664 "$J"
fi

# 5. The agent, its wrapper and the units.
put 0644 "$HERE/__AGENT__" usr/local/lib/fieldkit/__AGENT__
mkdir -p "$R/usr/local/bin"
WRAP="$R/usr/local/bin/fieldkit-agent.tmp.$$"
[ -n "$WRAP_PY" ] || WRAP_PY="\"$PY\""
printf '#!/bin/sh\n# fieldkit device agent (installed by install.sh from a fieldkit agent bundle)\nexec %s /usr/local/lib/fieldkit/__AGENT__ "$@"\n' "$WRAP_PY" > "$WRAP"
chmod 0755 "$WRAP"
rootown "$WRAP"
mv -f "$WRAP" "$R/usr/local/bin/fieldkit-agent"
for unit in systemd/*.service; do
    put 0644 "$HERE/$unit" "etc/systemd/system/$(basename "$unit")"
done

# 6. Keys: release keys the device trusts, operator keys allowed to change it over serial.
KEYS=0
for kind in trust operators; do
    for key in keys/$kind/*.pem; do
        [ -f "$key" ] || continue
        put 0644 "$HERE/$key" "etc/fieldkit/$kind/$(basename "$key")"
        own "$R/etc/fieldkit/$kind/$(basename "$key")"
        KEYS=$((KEYS + 1))
    done
done

say "agent $("$PY" "$HERE/__AGENT__" version) installed under ${R:-/} (runs with: $WRAP_PY, keys placed: $KEYS)"
[ -z "$NOTE" ] || say "note: $NOTE"

# 7. Enable the units (on the device itself, when systemd runs).
if [ -n "$R" ]; then
    say "--root given: units copied, not enabled (systemctl --root $R enable __RECOVER__ does it offline)"
elif [ "$ENABLE" = 0 ] || ! command -v systemctl >/dev/null 2>&1 || [ ! -d /run/systemd/system ]; then
    say "units copied to /etc/systemd/system, not enabled; to enable:"
    say "  systemctl daemon-reload && systemctl enable __RECOVER__ && systemctl enable --now fieldkit-agent@ttyS0.service"
else
    systemctl daemon-reload
    systemctl enable __RECOVER__
    if [ -n "$PORT" ]; then
        systemctl enable --now "fieldkit-agent@$PORT.service"
        say "the agent serves on /dev/$PORT (systemctl status fieldkit-agent@$PORT)"
    else
        say "serve on a port with: systemctl enable --now fieldkit-agent@ttyS0.service"
    fi
fi
say "technicians who use the device over SSH need the group: usermod -aG $GROUP USER"
"""


def install_script() -> str:
    return (INSTALL_SH.replace("__MARKER__", _MARKER).replace("__AGENT__", AGENT_FILE)
            .replace("__RECOVER__", RECOVER_UNIT)
            .replace("__MINPY__", "%d.%d" % MIN_DEVICE_PYTHON)
            .replace("__MINPY_TUPLE__", "%d, %d" % MIN_DEVICE_PYTHON))


def _readme(agent_sha: str, keys: list[KeyFile]) -> str:
    lines = [
        "fieldkit device agent bundle",
        "============================",
        "",
        "Copy this directory to the device (USB stick, scp), then on the device:",
        "",
        "    sudo sh install.sh --serial-port ttyS0     # or ttyUSB0 ...; without it the units are only installed",
        "",
        "It checks SHA256SUMS and the device's Python (>= %d.%d; --python PATH for another one), creates the"
        % MIN_DEVICE_PYTHON,
        "fieldkit group and the device layout (etc/fieldkit/{trust,operators}, var/lib/fieldkit/{models,staging}),",
        "installs the agent to /usr/local/lib/fieldkit/%s (wrapper: /usr/local/bin/fieldkit-agent)," % AGENT_FILE,
        "the systemd units to /etc/systemd/system, enables boot-time recovery, and places the keys below.",
        "Nothing is downloaded; no pip. `sh install.sh --help` lists the options (--root DIR for an image).",
        "",
        "On the laptop afterwards: fieldkit health serial:///dev/ttyUSB0?baud=115200",
        "",
        "agent sha256: %s" % agent_sha,
    ]
    for k in keys:
        lines.append("%s key: %s (%s)" % ("release" if k.kind == "trust" else "operator", k.fingerprint, k.file))
    return "\n".join(lines) + "\n"


def _key_file(path: Path, kind: str) -> tuple[str, bytes, str]:
    """``(bundle path, pem bytes, fingerprint)``, named ``key-<sha256(DER)[:16]>.pem`` as the agent names
    the anchors it adds, so a key placed here and one added later with ``fieldkit anchors add`` are one file."""
    from cryptography.hazmat.primitives import serialization

    from fieldkit.signing import key_fingerprint, load_public_key

    what = "release" if kind == "trust" else "operator"
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} key {path}: {exc.strerror or exc}") from None
    try:
        if len(raw) > 16384:
            raise ValueError(f"{len(raw)} bytes")
        key = load_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an ECDSA P-256 public key ({exc})",
                          hint="give the .pub.pem (`fieldkit release keygen` writes one), never a private key") from None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"keys/{kind}/key-{hashlib.sha256(der).hexdigest()[:16]}.pem", pem, key_fingerprint(key)


def _is_previous_bundle(out: Path) -> bool:
    try:
        return (out / "install.sh").is_file() and _MARKER in (out / "install.sh").read_text(errors="replace")[:400]
    except OSError:
        return False


def build_agent_bundle(out: Path, *, release_keys: Iterable[Path] = (), operator_keys: Iterable[Path] = (),
                       inference_service: str = "inference.service") -> AgentBundle:
    """Write the device bundle to ``out`` (a new or empty directory, or a previous bundle, replaced whole)."""
    from fieldkit.link.zipapp import agent_archive

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_previous_bundle(out):
        raise ConfigError(f"{out} is not empty and not an agent bundle: nothing was written",
                          hint="give a new or empty directory")
    if not inference_service or any(c.isspace() for c in inference_service) or "/" in inference_service:
        raise ConfigError(f"invalid systemd unit name {inference_service!r}")
    if "." not in inference_service:
        inference_service += ".service"

    keys: list[KeyFile] = []
    key_data: dict[str, bytes] = {}
    for kind, paths in (("trust", release_keys), ("operators", operator_keys)):
        for path in paths:
            name, pem, fp = _key_file(path, kind)
            if name not in key_data:
                key_data[name] = pem
                keys.append(KeyFile(kind, fp, name))

    archive = agent_archive()
    contents: dict[str, tuple[bytes, int]] = {
        "install.sh": (install_script().encode(), 0o755),
        AGENT_FILE: (archive.data, 0o644),
        f"systemd/{SERIAL_UNIT}": (serial_unit().encode(), 0o644),
        f"systemd/{RECOVER_UNIT}": (recover_unit(inference_service).encode(), 0o644),
        "README.txt": (_readme(archive.sha256, keys).encode(), 0o644),
    }
    for name, pem in key_data.items():
        contents[name] = (pem, 0o644)
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, (data, _) in sorted(contents.items()))
    contents["SHA256SUMS"] = (sums.encode(), 0o644)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, (data, mode) in contents.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.chmod(path, mode)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AgentBundle(out=out, agent_sha256=archive.sha256,
                       files={name: len(data) for name, (data, _) in sorted(contents.items())}, keys=keys)
