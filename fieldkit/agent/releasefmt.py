"""``release.json`` and semantic versions, checked in plain Python (stdlib only, Python 3.6 syntax).

The keys and their types are those of docs/releases.md ("A release"). :func:`parse_release`
answers a dict with every key checked (unknown keys are kept, for later formats) or raises
RemoteError ``bad_release`` naming the key. :func:`version_key` orders versions by semver 2.0
precedence (build metadata ignored).
"""

import json
import re

from fieldkit.agent.fields import is_int, is_number, shorten
from fieldkit.agent.omsverify import check_relpath
from fieldkit.agent.protocol import RemoteError

RELEASE_FILE = "release.json"
MAX_RELEASE_JSON = 1 << 20
MAX_SECURITY_VERSION = 2 ** 53 - 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
SEMVER = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$")


def check_model_name(value, code="bad_args", what="name"):
    if not isinstance(value, str) or not NAME.match(value):
        raise RemoteError(code, "%s must be a model name ([A-Za-z0-9][A-Za-z0-9._+-]{0,63}), got %s"
                          % (what, shorten(value, 80)))
    return value


def check_version(value, code="bad_args", what="version"):
    if not isinstance(value, str) or len(value) > 128 or not SEMVER.match(value):
        raise RemoteError(code, "%s must be a semantic version MAJOR.MINOR.PATCH[-pre][+build], got %s"
                          % (what, shorten(value, 80)))
    return value


def version_key(version):
    """A sort key giving semver precedence: 1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta < 1.0.0."""
    m = SEMVER.match(version)
    if m is None:
        return ((-1, -1, -1), 0, ())
    core = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if m.group(4) is None:
        return (core, 1, ())
    ids = []
    for part in m.group(4).split("."):
        ids.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return (core, 0, tuple(ids))


def _bad(where, message):
    return RemoteError("bad_release", "%s: %s" % (where, message))


def _text(release, key, where, required=False, limit=10000):
    value = release.get(key)
    if value is None:
        if required:
            raise _bad(where, "%s is required" % key)
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise _bad(where, "%s must be text of at most %d characters, got %s" % (key, limit, shorten(value, 40)))
    return value


def _relfile(value, where, key):
    return check_relpath(value, where, key, code="bad_release")


def parse_release(raw, where):
    """The checked release.json (a dict) from its bytes ``raw``."""
    if len(raw) > MAX_RELEASE_JSON:
        raise _bad(where, "larger than %d bytes" % MAX_RELEASE_JSON)
    try:
        release = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(where, "not valid JSON (%s)" % shorten(str(exc), 100))
    if not isinstance(release, dict):
        raise _bad(where, "not a JSON object")
    check_model_name(release.get("name"), "bad_release", where + ": name")
    check_version(release.get("version"), "bad_release", where + ": version")
    sv = release.get("security_version")
    if not is_int(sv) or sv < 0 or sv > MAX_SECURITY_VERSION:
        raise _bad(where, "security_version must be a whole number >= 0, got %s" % shorten(sv, 40))
    key = "model" if release.get("model") is not None else "model_file"
    if release.get(key) is None:
        raise _bad(where, "model (the file to run) is required")
    _relfile(release.get(key), where, key)
    profiles = release.get("profiles")
    if profiles is not None and (not isinstance(profiles, list) or len(profiles) > 256
                                 or any(not isinstance(p, str) or not p or len(p) > 200 for p in profiles)):
        raise _bad(where, "profiles must be a list of profile names")
    inputs = release.get("inputs")
    if inputs is not None:
        if not isinstance(inputs, list) or len(inputs) > 1024:
            raise _bad(where, "inputs must be a list of {name, shape, dtype}")
        for i, spec in enumerate(inputs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise _bad(where, "inputs[%d] must be an object with a name" % i)
            shape = spec.get("shape")
            if shape is not None and (not isinstance(shape, list) or len(shape) > 32 or any(
                    not (is_int(d) or isinstance(d, str) or d is None) for d in shape)):
                raise _bad(where, "inputs[%d].shape must be a list of dimensions" % i)
            if spec.get("dtype") is not None and not isinstance(spec.get("dtype"), str):
                raise _bad(where, "inputs[%d].dtype must be text" % i)
    for k in ("notes", "created", "created_by", "description"):
        _text(release, k, where)
    no_smoke = release.get("no_smoke", False)
    if no_smoke is None:
        no_smoke = False
    if not isinstance(no_smoke, bool):
        raise _bad(where, "no_smoke must be true or false")
    smoke = release.get("smoke")
    if smoke is not None:
        if no_smoke:
            raise _bad(where, "has both a smoke set and no_smoke: true")
        if not isinstance(smoke, dict):
            raise _bad(where, "smoke must be an object or null")
        for k in ("inputs", "outputs"):
            _relfile(smoke.get(k), where, "smoke." + k)
        for k in ("atol", "rtol"):
            v = smoke.get(k)
            if not is_number(v) or v < 0:
                raise _bad(where, "smoke.%s must be a number >= 0, got %s" % (k, shorten(v, 40)))
        budget = smoke.get("budget_ms")
        if budget is not None and (not is_number(budget) or not budget > 0):
            raise _bad(where, "smoke.budget_ms must be a positive number or null, got %s" % shorten(budget, 40))
    elif not no_smoke:
        raise _bad(where, "has neither a smoke set nor no_smoke: true (make the release with a smoke set or "
                          "with --no-smoke)")
    return release


def model_path(release):
    """The relative path of the file to run (``model``, or ``model_file`` of older releases)."""
    return release.get("model") if release.get("model") is not None else release.get("model_file")


def covered_files(release):
    """The files release.json names: each must be covered by the signature."""
    out = [RELEASE_FILE, model_path(release)]
    if isinstance(release.get("smoke"), dict):
        out += [release["smoke"]["inputs"], release["smoke"]["outputs"]]
    return out
