"""The device's model store (stdlib only, Python 3.9 syntax).

Layout under the models directory (``var/lib/fieldkit/models`` unless the profile moves it)::

    NAME/VERSION/             an installed release: its model file(s) and release.json
    NAME/current -> VERSION   the version in service
    NAME/previous -> VERSION  the retained rollback target

``release.json`` names the model file as ``model`` (``model_file`` in older releases is still
read); without either, the directory's single ``.onnx`` file is the model. Installation and
activation will build on :class:`ModelStore`; today the agent's ``bench_model`` uses it.
"""

import json
import os

from fieldkit.agent.fields import shorten
from fieldkit.agent.files import refuse_symlink
from fieldkit.agent.protocol import RemoteError

POINTERS = ("current", "previous")
MAX_RELEASE_JSON = 1 << 20


def check_name(value, label):
    """A model name or version: one path component, no dot-names, no control characters."""
    if (not isinstance(value, str) or not value or len(value) > 200 or "/" in value or "\x00" in value
            or value in (".", "..") or value.startswith(".")):
        raise RemoteError("bad_args", "invalid %s %s" % (label, shorten(value, 80)))
    return value


class ModelStore(object):
    """The models directory ``base`` (a full path under ``fs``, a :class:`~.files.DeviceRoot`)."""

    def __init__(self, fs, base, label=None):
        self.fs = fs
        self.base = base
        self.label = label or fs.device_path(base)

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
            if not isinstance(model_file, str) or "/" in model_file or model_file in (".", ".."):
                raise RemoteError("bad_release", "release.json of %s names an invalid %s %s"
                                  % (name, key, shorten(model_file, 80)))
            path = os.path.join(real, model_file)
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
