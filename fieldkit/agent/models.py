"""The device's model store: the one owner of its layout (stdlib only, Python 3.6 syntax).

Layout (docs/releases.md "Device layout"; every path is the device's decision: the defaults below,
or ``etc/fieldkit/agent.json`` on the device: ``{"trust", "operators", "models", "staging", "journal", "agent"}`` as
device paths; a request never names them)::

    models/NAME/VERSION/        an installed, verified release: its files and model.sig
    models/NAME/current         symlink -> VERSION, the version in service (swapped atomically)
    models/NAME/previous        symlink -> VERSION, the retained rollback target
    models/NAME/state.json      floor, state, activation in progress, install records, history
    models/NAME/.lock           flock held by the agent running an activation
    staging/<stage>/            a release being transferred; staging/<stage>.stage.json its claim

``release.json`` names the model file as ``model`` (``model_file`` in older releases is still
read); without either, the directory's single ``.onnx`` file is the model. Installation
(:mod:`.staging`), activation (:mod:`.activation`) and the store operations (:mod:`.storeops`)
reach the layout only through :class:`ModelStore`.
"""

import errno
import json
import os

from fieldkit.agent.devjournal import append_event, utc_now
from fieldkit.agent.fields import shorten
from fieldkit.agent.files import atomic_write, fsync_dir, open_nofollow, refuse_symlink
from fieldkit.agent.log import log
from fieldkit.agent.protocol import RemoteError

POINTERS = ("current", "previous")
MAX_RELEASE_JSON = 1 << 20
MAX_STATE = 4 << 20
MAX_HISTORY = 50
STATES = ("committed", "pending", "reverted")
CONFIG_FILE = "/etc/fieldkit/agent.json"
DEFAULT_PATHS = {
    "models": "/var/lib/fieldkit/models",
    "staging": "/var/lib/fieldkit/staging",
    "trust": "/etc/fieldkit/trust",
    "operators": "/etc/fieldkit/operators",
    "journal": "/var/lib/fieldkit/journal.jsonl",
    "agent": "/usr/local/lib/fieldkit/fieldkit-agent.pyz",  # the installed agent (install.sh; fieldkit agent upgrade)
}


def device_paths(fs):
    """DEFAULT_PATHS, overridden by the device's own ``etc/fieldkit/agent.json`` when it has one."""
    paths = dict(DEFAULT_PATHS)
    full = fs.resolve(CONFIG_FILE)
    try:
        fd = open_nofollow(full, CONFIG_FILE, os.O_RDONLY)
    except RemoteError as exc:
        if exc.code == "not_found":
            return paths
        raise RemoteError("bad_config", "%s: %s" % (CONFIG_FILE, exc.message))
    try:
        with os.fdopen(fd, "rb") as fh:
            conf = json.loads(fh.read(1 << 16).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RemoteError("bad_config", "%s on the device is not valid JSON: %s" % (CONFIG_FILE, shorten(str(exc))))
    if not isinstance(conf, dict):
        raise RemoteError("bad_config", "%s on the device must be a JSON object" % CONFIG_FILE)
    for key in DEFAULT_PATHS:
        value = conf.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.startswith("/"):
            raise RemoteError("bad_config", "%s: %s must be an absolute device path, got %s"
                              % (CONFIG_FILE, key, shorten(value, 80)))
        fs.resolve(value)
        paths[key] = value
    return paths


def check_name(value, label):
    """A model name or version: one path component, no dot-names, no control characters."""
    if (not isinstance(value, str) or not value or len(value) > 200 or "/" in value or "\x00" in value
            or value in (".", "..") or value.startswith(".")):
        raise RemoteError("bad_args", "invalid %s %s" % (label, shorten(value, 80)))
    return value


class ModelStore(object):
    """The models directory ``base`` (a full path under ``fs``, a :class:`~.files.DeviceRoot`)."""

    def __init__(self, fs, base, label=None, paths=None):
        self.fs = fs
        self.base = base
        self.label = label or fs.device_path(base)
        self.paths = paths or dict(DEFAULT_PATHS, models=self.label)

    @classmethod
    def open(cls, fs):
        """The device's own store (its paths from :func:`device_paths`)."""
        paths = device_paths(fs)
        return cls(fs, fs.resolve(paths["models"]), paths["models"], paths)

    # ---- where things are -----------------------------------------------------------------------
    @property
    def trust_dir(self):
        return self.fs.resolve(self.paths["trust"])

    @property
    def operators_dir(self):
        """Operator keys allowed to change the device over serial (:mod:`.operators`)."""
        return self.fs.resolve(self.paths["operators"])

    @property
    def staging_dir(self):
        return self.fs.resolve(self.paths["staging"])

    @property
    def journal_path(self):
        return self.fs.resolve(self.paths["journal"])

    def model_dir(self, name):
        return os.path.join(self.base, check_name(name, "model name"))

    def version_path(self, name, version):
        return os.path.join(self.model_dir(name), check_name(version, "version"))

    def pointer_path(self, name, which):
        return os.path.join(self.model_dir(name), which)

    def state_path(self, name):
        return os.path.join(self.model_dir(name), "state.json")

    def lock_path(self, name):
        return os.path.join(self.model_dir(name), ".lock")

    def stage_dir(self, stage):
        return os.path.join(self.staging_dir, check_name(stage, "stage"))

    def stage_claim(self, stage):
        return os.path.join(self.staging_dir, check_name(stage, "stage") + ".stage.json")

    def where(self, full):
        """The device path of ``full`` (for messages)."""
        return self.fs.device_path(full)

    # ---- the device journal ---------------------------------------------------------------------
    def journal(self, event, details):
        """Record ``event`` in the device journal; a journal that cannot be written is logged, and
        never leaves an activation half done."""
        try:
            append_event(self.journal_path, event, details)
        except (OSError, RemoteError) as exc:
            log("could not record %s in the device journal: %s" % (event, getattr(exc, "message", exc)))

    # ---- state.json -----------------------------------------------------------------------------
    def read_state(self, name):
        """The model's state (defaults when it has none); RemoteError ``bad_state`` when the file is
        damaged, since its floor can then not be trusted."""
        path = self.state_path(name)
        where = self.where(path)
        state = {"name": name, "floor": 0, "state": "committed", "activation": None, "history": [],
                 "installed": {}}
        try:
            fd = open_nofollow(path, where, os.O_RDONLY)
        except RemoteError as exc:
            if exc.code == "not_found":
                return state
            raise RemoteError("bad_state", exc.message)
        try:
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read(MAX_STATE + 1)
            got = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise _bad_state(where, "not valid JSON (%s)" % shorten(str(exc), 80))
        if not isinstance(got, dict):
            raise _bad_state(where, "not a JSON object")
        floor = got.get("floor", 0)
        if not isinstance(floor, int) or isinstance(floor, bool) or floor < 0:
            raise _bad_state(where, "floor is not a whole number >= 0")
        if got.get("state", "committed") not in STATES:
            raise _bad_state(where, "state %s is not one of %s" % (shorten(got.get("state"), 40), ", ".join(STATES)))
        act = got.get("activation")
        if act is not None and not (isinstance(act, dict) and isinstance(act.get("step"), str)
                                    and isinstance(act.get("target"), str)
                                    and all(act.get(k) is None or isinstance(act.get(k), str)
                                            for k in ("previous", "prev_previous", "service"))):
            raise _bad_state(where, "activation is not a valid record")
        for key in ("history",):
            if not isinstance(got.get(key, []), list):
                raise _bad_state(where, "%s is not a list" % key)
        if not isinstance(got.get("installed", {}), dict):
            raise _bad_state(where, "installed is not an object")
        state.update(got)
        state["name"] = name
        return state

    def write_state(self, name, state):
        """Durable replace of state.json (temp, fsync, rename, fsync dir) before the step it names."""
        state["history"] = state.get("history", [])[-MAX_HISTORY:]
        state["updated"] = utc_now()
        data = json.dumps(state, sort_keys=True, indent=1, allow_nan=False).encode("utf-8") + b"\n"
        atomic_write(self.state_path(name), data, mode=0o664)

    @staticmethod
    def add_history(state, event, **details):
        entry = {"time": utc_now(), "event": event}
        entry.update(details)
        state.setdefault("history", []).append(entry)

    # ---- the pointers ---------------------------------------------------------------------------
    def set_pointer(self, name, which, version):
        """Point ``NAME/which`` at ``version`` atomically (``which.new`` symlink, rename over, fsync
        the directory); ``version`` None removes the pointer."""
        top = self.model_dir(name)
        path = os.path.join(top, which)
        if version is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        else:
            check_name(version, "version")
            tmp = path + ".new"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(version, tmp)
            os.replace(tmp, path)
        fsync_dir(top)

    def clean_pointer_leftovers(self, name):
        """Remove ``current.new`` / ``previous.new`` / ``state.json.tmp-*`` a crash left behind."""
        top = self.model_dir(name)
        for n in _listdir_all(top):
            if n in ("current.new", "previous.new") or n.startswith("state.json.tmp-"):
                try:
                    os.unlink(os.path.join(top, n))
                except OSError:
                    pass

    # ---- the activation lock --------------------------------------------------------------------
    def lock(self, name):
        """A :class:`ModelLock` on ``NAME/.lock`` (not yet taken)."""
        return ModelLock(self.lock_path(name), name, self.where(self.lock_path(name)))

    def names(self):
        return _listdir(self.base, dirs=True)

    def versions(self, name):
        return [v for v in _listdir(os.path.join(self.base, check_name(name, "model name")), dirs=True)
                if v not in POINTERS]

    def pointer(self, name, which="current"):
        """The version ``NAME/current`` (or ``previous``) points at, or None."""
        try:
            target = os.readlink(os.path.join(self.base, check_name(name, "model name"), which))
        except OSError:
            return None
        return os.path.basename(target.rstrip("/")) or None

    def version_dir(self, name, version=None):
        """The real directory of ``NAME/VERSION`` (``NAME/current`` when no version is given)."""
        check_name(name, "model name")
        if version is not None:
            check_name(version, "version")
        top = os.path.join(self.base, name)
        if not os.path.isdir(top):
            raise RemoteError("model_not_installed", "no model %s is installed on the device under %s (installed: %s)"
                              % (name, self.label, ", ".join(self.names()) or "none"))
        versions = self.versions(name)
        where = os.path.join(top, version or "current")
        if not os.path.isdir(where):
            if version:
                raise RemoteError("version_not_installed", "model %s has no version %s on the device (versions: %s)"
                                  % (name, version, ", ".join(versions) or "none"))
            raise RemoteError("no_current_version", "model %s has no current version on the device (versions: %s); "
                              "give one as installed:%s@VERSION" % (name, ", ".join(versions) or "none", name))
        self.fs.check_real(where, "%s/%s" % (name, version or "current"))
        return os.path.realpath(where)

    def release(self, real, name):
        """release.json of the version directory ``real`` as a dict ({} when there is none)."""
        path = os.path.join(real, "release.json")
        if refuse_symlink(path, self.fs.device_path(path)) is None:
            return {}
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_RELEASE_JSON + 1)
            if len(raw) > MAX_RELEASE_JSON:
                raise ValueError("larger than %d bytes" % MAX_RELEASE_JSON)
            release = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise RemoteError("bad_release", "release.json of %s is unreadable: %s" % (name, shorten(str(exc))))
        if not isinstance(release, dict):
            raise RemoteError("bad_release", "release.json of %s is not a JSON object" % name)
        return release

    def model_file(self, real, name, release):
        """Full path of the model file in ``real``: release.json's ``model`` (or ``model_file``),
        else the single .onnx file there."""
        key = "model" if release.get("model") is not None else "model_file"
        model_file = release.get(key)
        if model_file:
            from fieldkit.agent.omsverify import check_relpath
            check_relpath(model_file, "release.json of %s" % name, key, code="bad_release")
            path = os.path.join(real, *model_file.split("/"))
            if refuse_symlink(path, self.fs.device_path(path)) is None or not os.path.isfile(path):
                raise RemoteError("model_not_found", "release.json of %s names %s, which is not in %s"
                                  % (name, model_file, self.fs.device_path(real)))
            return path
        onnx = [f for f in _listdir(real) if f.endswith(".onnx")]
        if len(onnx) != 1:
            raise RemoteError("model_not_found", "%s holds %s .onnx files%s; name one as model in release.json"
                              % (self.fs.device_path(real), len(onnx) or "no",
                                 (" (" + ", ".join(onnx) + ")") if onnx else ""))
        return os.path.join(real, onnx[0])

    def find(self, name, version=None):
        """What ``bench_model`` answers: the model file of NAME at VERSION (or current)."""
        real = self.version_dir(name, version)
        release = self.release(real, name)
        path = self.model_file(real, name, release)
        return {
            "name": name,
            "version": _text(release.get("version")) or os.path.basename(real),
            "dir": self.fs.device_path(real),
            "path": self.fs.device_path(path),
            "size": os.path.getsize(path),
            "release": {k: release[k] for k in ("name", "version", "description", "model", "model_file", "inputs")
                        if k in release},
        }


class ModelLock(object):
    """An exclusive ``flock`` on ``NAME/.lock``: held by the agent running an activation, from
    ``model_activate`` to its commit or revert. Released when the process ends, however it ends."""

    def __init__(self, path, name, where):
        self.path = path
        self.name = name
        self.where = where
        self.fd = None

    def try_acquire(self):
        """True when taken; False when another live agent holds it."""
        import fcntl
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = open_nofollow(self.path, self.where, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, ("%d\n" % os.getpid()).encode(), 0)
        except OSError:
            pass
        self.fd = fd
        return True

    def acquire(self):
        if not self.try_acquire():
            holder = ""
            try:
                with open(self.path, "rb") as fh:
                    holder = fh.read(32).decode("ascii", "replace").strip()
            except OSError:
                pass
            raise RemoteError("busy", "another agent%s is activating model %s right now (%s is locked); wait "
                              "for it to commit or revert" % (" (pid %s)" % holder if holder else "", self.name,
                                                             self.where))
        return self

    def release(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            finally:
                self.fd = None


def _bad_state(where, what):
    return RemoteError("bad_state", "%s is damaged: %s; the model's floor cannot be trusted. Restore it from a "
                                    "backup, or remove it knowingly (the floor restarts at 0)" % (where, what))


def _listdir_all(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _text(value):
    return value if isinstance(value, str) else None


def _listdir(path, dirs=False):
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return []
    if dirs:
        return [n for n in names if os.path.isdir(os.path.join(path, n)) and not n.startswith(".")]
    return [n for n in names if os.path.isfile(os.path.join(path, n)) and not os.path.islink(os.path.join(path, n))]
