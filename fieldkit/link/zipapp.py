"""Build the agent zipapp that is pushed to devices, content-addressed by its sha256.

The archive holds ``fieldkit/agent`` (stdlib-only), a stub ``fieldkit/__init__.py`` and, at its
root, the pure-Python ``ecdsa`` package (its modules, not its tests) with ``six.py``, which it
imports: a device without ``cryptography`` verifies release signatures with them
(:mod:`fieldkit.agent.omsverify`). Entries have fixed timestamps and a sorted order, so the same
sources always give the same bytes and the device-side cache (``~/.cache/fieldkit/agent-<hash>.pyz``)
is reused across runs.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fieldkit.fsutil import atomic_write

_FIXED_TIME = (2020, 1, 1, 0, 0, 0)
# Parses under Python 2 too, so an old interpreter gets one clear line instead of a SyntaxError.
_MAIN = (b"import sys\n"
         b"if sys.version_info < (3, 6):\n"
         b"    sys.stderr.write('fieldkit-agent: needs Python 3.6 or later; %s is Python %s\\n'"
         b" % (sys.executable, sys.version.split()[0]))\n"
         b"    sys.exit(2)\n"
         b"from fieldkit.agent.__main__ import main\n"
         b"sys.exit(main())\n")


@dataclass(frozen=True)
class AgentArchive:
    data: bytes
    sha256: str

    @property
    def short(self) -> str:
        return self.sha256[:16]

    def write_cached(self, cache_dir: Path) -> Path:
        """Write the archive as ``cache_dir/agent-<hash>.pyz`` (once) and return the path."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / f"agent-{self.short}.pyz"
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != self.sha256:
            atomic_write(path, self.data, durable=False)  # a cache: concurrent writers write the same bytes
        return path


def _verifier_modules() -> list[tuple[str, bytes]]:
    """``(archive name, bytes)`` of the installed ecdsa package (no tests) and six.py, sorted."""
    import ecdsa
    import six

    pkg = Path(ecdsa.__file__).resolve().parent
    out = [(f"ecdsa/{p.name}", p.read_bytes()) for p in sorted(pkg.glob("*.py")) if not p.name.startswith("test_")]
    out.append(("six.py", Path(six.__file__).read_bytes()))
    return out


@lru_cache(maxsize=1)
def agent_archive() -> AgentArchive:
    src = Path(__file__).resolve().parent.parent / "agent"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)

        add("__main__.py", _MAIN)
        add("fieldkit/__init__.py", b"")
        for path in sorted(src.glob("*.py")):
            add(f"fieldkit/agent/{path.name}", path.read_bytes())
        for name, data in _verifier_modules():
            add(name, data)
    data = buf.getvalue()
    return AgentArchive(data, hashlib.sha256(data).hexdigest())
