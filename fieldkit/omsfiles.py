"""The directory side of model signing: which files a signature covers, and their sha256.

The listing rules (every regular file; symlinks and special files refused; the ignore paths) and
the order are ``model_signing``'s (see :mod:`fieldkit.oms`); hashing runs in parallel threads with
progress and cancellation, because a release can hold gigabytes of weights.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

from fieldkit.errors import Cancelled, ConfigError
from fieldkit.omsformat import DEFAULT_IGNORES, FileDigest, VerificationFailed, name_problem, resource_sort_key

CHUNK = 1 << 20                      # read size when hashing

Progress = Callable[[int, int], None]  # (bytes hashed so far, total bytes)


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled")


def _normalise_ignore(path: str) -> str | None:
    """An ignore path as ``model_signing`` applies it (relative to DIR): None when it ignores nothing,
    "" when it ignores everything ("." )."""
    if not path or path.startswith("/") or "\x00" in path:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def _ignored(name: str, ignores: Iterable[str]) -> bool:
    return any(i == "" or name == i or name.startswith(i + "/") for i in ignores)


def effective_ignores(signature_name: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    out = {signature_name, *DEFAULT_IGNORES}
    for p in extra:
        n = _normalise_ignore(p)
        if n is not None:
            out.add(n)
    return tuple(sorted(out))


# --- files -----------------------------------------------------------------------------------------

def hash_file(path: Path | str, *, cancel: threading.Event | None = None,
              on_bytes: Callable[[int], None] | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of a regular file, read in 1 MiB chunks; refuses a symlink (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        size = 0
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
            if on_bytes is not None:
                on_bytes(n)
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"hashing {path} cancelled")
        return size, h.hexdigest()


def scan_directory(directory: Path, ignores: Sequence[str]) -> dict[str, Path]:
    """Every regular file under ``directory`` that is not ignored, by relative name.

    VerificationFailed ``symlink`` for a symlink anywhere below (ignored places included, as
    ``model_signing`` does), ``bad_path`` for a special file or a name that is not UTF-8."""
    found: dict[str, Path] = {}
    stack: list[tuple[Path, str]] = [(directory, "")]
    while stack:
        here, prefix = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError as exc:
            raise VerificationFailed("bad_path", f"{here} cannot be listed: {exc.strerror or exc}",
                                     path=prefix or ".") from None
        for entry in entries:
            rel = prefix + entry.name
            shown = directory / rel
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise VerificationFailed("bad_path", f"{str(shown)!r}: the file name is not valid UTF-8", path=rel) from None
            if entry.is_symlink():
                raise VerificationFailed("symlink", f"{shown} is a symbolic link; a release holds plain files only",
                                         path=rel, hint="copy the file it points to instead of linking it")
            if entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), rel + "/"))
            elif entry.is_file(follow_symlinks=False):
                if not _ignored(rel, ignores):
                    found[rel] = Path(entry.path)
            else:
                raise VerificationFailed("bad_path", f"{shown} is not a regular file (a device, pipe or socket)",
                                         path=rel)
    return found


def hash_files(files: dict[str, Path], *, cancel: threading.Event | None = None,
               progress: Progress | None = None) -> list[FileDigest]:
    """sha256 of every file (in parallel when there are several), in ``model_signing`` order."""
    names = sorted(files, key=resource_sort_key)
    sizes = {}
    for n in names:
        try:
            sizes[n] = files[n].stat().st_size
        except OSError:
            sizes[n] = 0
    total = sum(sizes.values())
    done = [0]
    lock = threading.Lock()

    def on_bytes(n: int) -> None:
        with lock:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

    def one(name: str) -> FileDigest:
        try:
            size, digest = hash_file(files[name], cancel=cancel, on_bytes=on_bytes if progress else None)
        except Cancelled:
            raise
        except OSError as exc:
            if os.path.islink(files[name]):
                raise VerificationFailed("symlink", f"{files[name]} is a symbolic link", path=name) from None
            raise VerificationFailed("bad_path", f"{files[name]} cannot be read: {exc.strerror or exc}",
                                     path=name) from None
        return FileDigest(name, size, digest)

    check_cancel(cancel, "hashing")
    workers = min(len(names), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [one(n) for n in names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fieldkit-hash") as pool:
        return list(pool.map(one, names))


def check_directory(directory: Path) -> Path:
    directory = Path(directory)
    if directory.is_symlink():
        raise VerificationFailed("symlink", f"{directory} is a symbolic link; give the directory itself",
                                 path=".")
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory" if directory.exists() else f"{directory} does not exist")
    return directory


def check_signature_name(signature_name: str) -> None:
    if name_problem(signature_name) is not None or "/" in signature_name:
        raise ConfigError(f"signature name {signature_name!r} must be a plain file name")
