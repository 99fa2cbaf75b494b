"""Durable file writes on the laptop: the one atomic-write helper.

``atomic_open`` / ``atomic_write`` write a temp file in the same directory, fsync it, rename it
over the target (``os.replace``) and fsync the directory, so a crash leaves either the old file or
the new one, never a torn mix. The temp file is created with the final mode, so a private file
(0600) is never readable by others, not even for a moment. A failed fsync is not retried (the
dirty pages may be gone): the write fails and the target is untouched.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename inside it survives power loss (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike[str], *, mode: int = 0o644, binary: bool = False,
                durable: bool = True) -> Iterator[IO[Any]]:
    """A file handle whose content replaces ``path`` atomically when the block ends without an
    exception; on an exception the temp file is removed and ``path`` is untouched.
    ``durable=False`` skips the fsyncs (caches whose loss costs only a rebuild)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have taken bits away
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644,
                 durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, mode=mode, binary=isinstance(data, (bytes, bytearray, memoryview)),
                     durable=durable) as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike[str], doc: Any, *, mode: int = 0o644, indent: int | None = 2) -> None:
    """``atomic_write`` of a JSON document (UTF-8, trailing newline)."""
    atomic_write(path, json.dumps(doc, indent=indent, default=str) + "\n", mode=mode)
