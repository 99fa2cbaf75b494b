"""Files under the device root: path safety, uploads, stat, hash, remove (stdlib only, Python 3.6 syntax).

Every device path a message names goes through :meth:`DeviceRoot.resolve`:

* it is mapped under the agent's root (``/x`` means ``<root>/x``) and may not climb out of it
  (``..``), nor be the root itself;
* the real path (symlinks followed) of its parent directory must lie inside the real root, so a
  symlinked directory cannot lead elsewhere;
* the final component is opened with ``O_NOFOLLOW`` (:func:`open_nofollow`), and refused when it
  is a symlink; the upload's ``.part`` file the same.
"""

import errno
import hashlib
import os
import stat

from fieldkit.agent.fields import MAX_PATH, get_int, get_sha256, shorten
from fieldkit.agent.protocol import DATA_CHUNK, RemoteError

MAX_UPLOAD = 1 << 40  # bytes announced by one put
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class DeviceRoot(object):
    """The agent's root directory and the rules for paths under it."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.real = os.path.realpath(root)

    def _inside(self, real):
        return real == self.real or real.startswith(self.real.rstrip("/") + "/")

    def resolve(self, rel, allow_root=False):
        """The full path of device path ``rel``; RemoteError ``bad_path`` when it is not allowed."""
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise RemoteError("bad_path", "invalid path %s" % shorten(rel, 80))
        if len(rel) > MAX_PATH:
            raise RemoteError("bad_path", "path %s is %d characters long; the limit is %d"
                              % (shorten(rel), len(rel), MAX_PATH))
        full = os.path.normpath(os.path.join(self.root, rel.lstrip("/")))
        if full != self.root and not full.startswith(self.root.rstrip("/") + "/"):
            raise RemoteError("bad_path", "path %s leaves the device root" % shorten(rel))
        if full == self.root:
            if allow_root:
                return full
            raise RemoteError("bad_path", "path %s is the device root itself; name a file under it" % shorten(rel))
        self.check_parent(full, rel)
        return full

    def check_parent(self, full, rel=None):
        """Refuse ``full`` when its parent directory really lies outside the root (a symlink)."""
        if not self._inside(os.path.realpath(os.path.dirname(full))):
            raise RemoteError("bad_path", "path %s leaves the device root through a symlink"
                              % shorten(rel if rel is not None else self.device_path(full)))

    def check_real(self, full, what):
        """Refuse a directory reached through symlinks (models/NAME/current) that ends outside."""
        if not self._inside(os.path.realpath(full)):
            raise RemoteError("bad_path", "%s points outside the device root" % shorten(what))

    def device_path(self, full):
        for base in (self.real, self.root):
            if full == base:
                return "/"
            if full.startswith(base.rstrip("/") + "/"):
                return "/" + full[len(base.rstrip("/")) + 1:]
        return full

    def makedirs(self, full, rel):
        """Create the parent directories of ``full``, then check again that they stay inside."""
        parent = os.path.dirname(full)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise RemoteError("io_error", "cannot create the directory of %s: %s" % (shorten(rel), _why(exc)))
        self.check_parent(full, rel)


def path_arg(fs, args, key="path"):
    """``(device path, full path)`` of the path argument ``key`` (RemoteError ``bad_path`` if unusable)."""
    rel = args.get(key)
    if rel is None:
        raise RemoteError("bad_args", "%s is required (a device path)" % key)
    return rel, fs.resolve(rel)


def refuse_symlink(full, rel):
    """RemoteError when the final component of ``full`` is a symlink; its lstat (or None)."""
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RemoteError("io_error", "%s: %s" % (shorten(rel), _why(exc)))
    if stat.S_ISLNK(st.st_mode):
        raise RemoteError("bad_path", "%s is a symlink; refused" % shorten(rel))
    return st


def open_nofollow(full, rel, flags, mode=0o600):
    """``os.open`` that refuses a symlink as the final component and anything but a regular file."""
    try:
        fd = os.open(full, flags | _NOFOLLOW | _NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RemoteError("bad_path", "%s is a symlink; refused" % shorten(rel))
        if exc.errno == errno.ENOENT:
            raise RemoteError("not_found", "%s does not exist on the device" % shorten(rel))
        raise RemoteError("io_error", "%s: %s" % (shorten(rel), _why(exc)))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RemoteError("not_a_file", "%s is not a regular file" % shorten(rel))
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _why(exc):
    return exc.strerror or str(exc)[:200]


def fsync_dir(path):
    """fsync a directory so a rename inside it survives power loss (best effort)."""
    try:
        dfd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write(path, data, mode=0o640):
    """Replace ``path`` with ``data``: temp file (a leftover or planted symlink is replaced, never
    followed), fsync, rename, fsync of the directory. The device side's one durable write."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


class Upload(object):
    """An incoming file, written to ``dest + '.part'`` as data arrives; resumable by offset."""

    def __init__(self, fs, args):
        self.rel, self.path = path_arg(fs, args)
        self.part = self.path + ".part"
        self.size = get_int(args, "size", lo=0, hi=MAX_UPLOAD, required=True)
        self.expect_sha256 = get_sha256(args, "sha256")
        offset = get_int(args, "offset", 0, lo=0, hi=self.size)
        fs.makedirs(self.path, self.rel)
        refuse_symlink(self.path, self.rel)
        fd = open_nofollow(self.part, self.rel + ".part", os.O_RDWR | os.O_CREAT)
        self.fh = os.fdopen(fd, "r+b")
        try:
            have = os.fstat(fd).st_size
            if offset > have:
                raise RemoteError("bad_offset", "resume offset %d is past the %d bytes already staged" % (offset, have))
            self.hash = hashlib.sha256()
            self.fh.seek(0)
            remaining = offset
            while remaining:
                block = self.fh.read(min(1 << 20, remaining))
                if not block:
                    break
                self.hash.update(block)
                remaining -= len(block)
            self.fh.seek(offset)
            self.fh.truncate(offset)
        except BaseException:
            self.fh.close()
            raise
        self.offset = offset

    def data(self, off, body, eof):
        if off != self.offset:
            raise RemoteError("bad_offset", "data at offset %d, expected %d" % (off, self.offset))
        if self.offset + len(body) > self.size:
            raise RemoteError("too_large", "more data than the announced %d bytes" % self.size)
        try:
            self.fh.write(body)
        except OSError as exc:
            raise RemoteError("io_error", "writing %s failed: %s" % (shorten(self.rel + ".part"), _why(exc)))
        self.hash.update(body)
        self.offset += len(body)
        return eof

    def finish(self):
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        finally:
            self.fh.close()
        if self.offset != self.size:
            raise RemoteError("short", "received %d of %d bytes" % (self.offset, self.size))
        digest = self.hash.hexdigest()
        if self.expect_sha256 and digest != self.expect_sha256:
            os.unlink(self.part)
            raise RemoteError("digest_mismatch", "sha256 of the received file is %s, expected %s" % (digest, self.expect_sha256))
        refuse_symlink(self.path, self.rel)
        try:
            os.replace(self.part, self.path)
        except OSError as exc:
            raise RemoteError("io_error", "cannot put %s in place: %s" % (shorten(self.rel), _why(exc)))
        fsync_dir(os.path.dirname(self.path))
        return {"path": self.rel, "size": self.size, "sha256": digest}

    def abort(self):
        try:
            self.fh.close()
        except OSError:
            pass


def stat_op(fs, req):
    rel, path = path_arg(fs, req.args)
    st = refuse_symlink(path, rel)
    out = {"path": rel, "exists": st is not None}
    if st is not None:
        out["size"] = st.st_size
    part = refuse_symlink(path + ".part", rel + ".part")
    out["partial_size"] = part.st_size if part is not None and stat.S_ISREG(part.st_mode) else 0
    return out


def hash_op(fs, req):
    rel, path = path_arg(fs, req.args)
    fd = open_nofollow(path, rel, os.O_RDONLY)
    h = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb") as fh:
        while True:
            req.check_cancel()
            block = fh.read(DATA_CHUNK * 4)
            if not block:
                break
            h.update(block)
            size += len(block)
    return {"path": rel, "sha256": h.hexdigest(), "size": size}


def remove_op(fs, req):
    rel, path = path_arg(fs, req.args)
    removed = []
    for p, name in ((path, rel), (path + ".part", rel + ".part")):
        st = refuse_symlink(p, name)
        if st is not None and stat.S_ISREG(st.st_mode):
            try:
                os.unlink(p)
            except OSError as exc:
                raise RemoteError("io_error", "cannot remove %s: %s" % (shorten(name), _why(exc)))
            removed.append(fs.device_path(p))
    return {"removed": removed}
