"""Pushing the agent over SSH: find a Python on the device, upload the zipapp once (content-addressed)."""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from typing import Iterator

from fieldkit.errors import ConnectError
from fieldkit.link.ssh import SshSession


DEFAULT_PYTHONS = ("python3", "/usr/bin/python3", "/usr/local/bin/python3", "python3.13",
                   "python3.12", "python3.11", "python3.10", "python3.9", "python3.8", "python3.7", "python3.6")
"""Tried in order. The agent runs on Python >= 3.6: JetPack 4 (Ubuntu 18.04) ships 3.6, JetPack 5 3.8."""
MIN_PYTHON = (3, 6)


# --------------------------------------------------------------------------- agent push

@dataclass(frozen=True)
class PushedAgent:
    """Where the agent is on the device. Unpacks as ``python, path = push_agent(...)``."""

    python: str  # absolute path of the interpreter that will run it
    path: str  # absolute path of the cached .pyz
    uploaded: bool  # False: the cached copy was reused
    python_version: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.python, self.path))


_MARK = "@@fk"
_VERSION_CODE = ("import sys; v = sys.version_info; "  # also runs on Python 2: says "old" there
                 "print('%%d.%%d.%%d %%s' %% (v[0], v[1], v[2], 'ok' if v >= (%d, %d) else 'old'))" % MIN_PYTHON)
_HASH_CODE = ("import hashlib, sys; h = hashlib.sha256(); f = open(sys.argv[1], 'rb'); "
              "[h.update(b) for b in iter(lambda: f.read(1 << 20), b'')]; print(h.hexdigest())")


def _probe_script(candidates: tuple[str, ...], name: str) -> str:
    q = shlex.quote
    cands = " ".join(q(c) for c in candidates)
    return f"""
d="$HOME/.cache/fieldkit"
umask 077
if mkdir -p "$d" 2>/dev/null && chmod 700 "$d" 2>/dev/null && [ -w "$d" ]; then
  printf '{_MARK}\\tdir\\tok\\t%s\\n' "$d"
else
  printf '{_MARK}\\tdir\\tfail\\t%s\\n' "$d"
fi
good=""
for p in {cands}; do
  w=$(command -v "$p" 2>/dev/null)
  if [ -z "$w" ]; then printf '{_MARK}\\tpy\\t%s\\tmissing\\t\\n' "$p"; continue; fi
  v=$("$w" -c {q(_VERSION_CODE)} 2>&1 | head -n 1)
  printf '{_MARK}\\tpy\\t%s\\t%s\\t%s\\n' "$p" "$w" "$v"
  case "$v" in *" ok") good="$w"; break;; esac
done
f="$d/{name}"
if [ -n "$good" ] && [ -f "$f" ]; then
  h=$("$good" -c {q(_HASH_CODE)} "$f" 2>/dev/null)
  printf '{_MARK}\\tcached\\t%s\\n' "$h"
else
  printf '{_MARK}\\tcached\\t\\n'
fi
"""


def _upload_script(python: str, directory: str, name: str, sha256: str) -> str:
    q = shlex.quote
    return (f"umask 077; d={q(directory)}; f=\"$d\"/{q(name)}; t=\"$d/.upload-$$.tmp\"; "
            f"trap 'rm -f \"$t\"' EXIT; "
            f"cat > \"$t\" || exit 10; "
            f"h=$({q(python)} -c {q(_HASH_CODE)} \"$t\") || exit 11; "
            f"if [ \"$h\" != {q(sha256)} ]; then echo \"sha256 on the device is $h\" >&2; exit 12; fi; "
            f"mv -f \"$t\" \"$f\" || exit 13; trap - EXIT; "
            f"for o in \"$d\"/agent-*.pyz; do [ \"$o\" = \"$f\" ] || rm -f \"$o\"; done; "
            f"echo {_MARK}-uploaded")


def push_agent(session: SshSession, zipapp_bytes: bytes, digest: str,
               python_candidates: tuple[str, ...] = DEFAULT_PYTHONS, *,
               timeout: float = 60.0) -> PushedAgent:
    """Make sure ``~/.cache/fieldkit/agent-<digest[:16]>.pyz`` on the device holds exactly
    ``zipapp_bytes`` (sha256 ``digest``) and find a Python >= 3.6 to run it.

    One shell round trip probes the interpreters and the cached copy; the archive is uploaded
    only when missing or stale (to a temp name, hash-checked on the device, then renamed; older
    ``agent-*.pyz`` are removed). Raises :class:`ConnectError` when no candidate is usable.
    """
    actual = hashlib.sha256(zipapp_bytes).hexdigest()
    if actual != digest.lower():
        raise ValueError(f"push_agent: digest {digest} is not the sha256 of the archive ({actual})")
    candidates = tuple(python_candidates) or DEFAULT_PYTHONS
    name = f"agent-{actual[:16]}.pyz"
    rc, out, err = session.run("/bin/sh -s", input=_probe_script(candidates, name).encode(),
                               timeout=timeout)
    directory = None
    dir_ok = False
    tried: list[str] = []
    python = version = None
    cached = ""
    for line in out.decode("utf-8", "replace").splitlines():
        fields = line.split("\t")
        if not fields or fields[0] != _MARK:
            continue
        if fields[1] == "dir" and len(fields) >= 4:
            dir_ok, directory = fields[2] == "ok", fields[3]
        elif fields[1] == "py" and len(fields) >= 5:
            cand, where, said = fields[2], fields[3], fields[4].strip()
            if where == "missing":
                tried.append(f"{cand}: not found")
            elif said.endswith(" ok"):
                python, version = where, said.split()[0]
            elif said.endswith(" old"):
                tried.append(f"{cand} ({where}): too old, version {said.split()[0]}")
            else:
                tried.append(f"{cand} ({where}): does not run ({said or 'no output'})")
        elif fields[1] == "cached":
            cached = fields[2].strip() if len(fields) > 2 else ""
    if directory is None:
        raise ConnectError(f"could not probe {session.name} with /bin/sh (exit {rc}): "
                           f"{err.decode('utf-8', 'replace').strip() or 'no output'}",
                           hint="the device needs a POSIX shell at /bin/sh for fieldkit's agent")
    if python is None:
        raise ConnectError(f"no usable Python on {session.name}: " + "; ".join(tried),
                           hint="install python3 (>= %d.%d) on the device, or list its interpreter " % MIN_PYTHON +
                                "in the device profile's transport.python")
    if not dir_ok:
        raise ConnectError(f"cannot create the agent cache {directory} on {session.name}",
                           hint="is the home directory writable (or full, or read-only)?")
    path = f"{directory}/{name}"
    if cached == actual:
        return PushedAgent(python, path, False, version or "")
    rc, out, err = session.run("/bin/sh -c " + shlex.quote(_upload_script(python, directory, name,
                                                                           actual)),
                               input=zipapp_bytes, timeout=timeout + len(zipapp_bytes) / 1e6)
    if rc != 0 or f"{_MARK}-uploaded".encode() not in out:
        said = err.decode("utf-8", "replace").strip() or out.decode("utf-8", "replace").strip()
        raise ConnectError(f"uploading the agent to {path} on {session.name} failed "
                           f"(exit {rc}): {said or 'no output'}",
                           hint="is the device's disk full?")
    return PushedAgent(python, path, True, version or "")
