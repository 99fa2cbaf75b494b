"""What a benchmark needs beyond ``pip install -e .``, checked before it starts.

Every ``scripts/bench/*.py`` calls :func:`require` first thing in ``main()``: a missing Python
package or program ends the run with exit status 2 and one message saying what to install
(``pip install -e '.[scripts]'``, or the Debian package of a program), never a traceback halfway
through. tests/test_bench_scripts.py skips a benchmark whose message starts with
:data:`MARKER` (the suite's machine lacks a program) and fails on any other non-zero exit.
Not a benchmark itself: the leading underscore keeps it out of the suite's glob.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

MARKER = "cannot run here, missing:"

# Debian packages of the programs benchmarks compare against (.ci/run installs them).
DEBIAN = {"sshd": "openssh-server", "ssh": "openssh-client", "scp": "openssh-client", "openssl": "openssl",
          "sz": "lrzsz", "rz": "lrzsz", "socat": "socat"}


def _have_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses it
        return False


def _have_program(name: str) -> bool:
    if name == "sshd":
        return Path("/usr/sbin/sshd").exists() or shutil.which("sshd") is not None
    if shutil.which(name) is not None:
        return True
    return (Path(sys.executable).parent / name).exists()  # console scripts of this venv (model_signing)


def require(script: str, *, modules: tuple[str, ...] = (), programs: tuple[str, ...] = ()) -> None:
    """Exit 2 naming what is missing (Python modules of the ``scripts`` extra, programs)."""
    missing_mods = [m for m in modules if not _have_module(m)]
    missing_progs = [p for p in programs if not _have_program(p)]
    if not missing_mods and not missing_progs:
        return
    how = []
    if missing_mods:
        how.append(f"Python package(s) {', '.join(missing_mods)}: pip install -e '.[scripts]' in the fieldkit checkout")
    if missing_progs:
        debs = sorted({DEBIAN.get(p, p) for p in missing_progs})
        how.append(f"program(s) {', '.join(missing_progs)}: apt-get install {' '.join(debs)}")
    print(f"{Path(script).name} {MARKER} " + "; ".join(how), file=sys.stderr)
    raise SystemExit(2)
