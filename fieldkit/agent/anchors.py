"""Trust anchors: the release keys a device accepts, and its operator keys (stdlib only, Python 3.6 syntax).

``etc/fieldkit/trust/*.pem`` (or where ``etc/fieldkit/agent.json`` puts it) holds one EC P-256
public key per file; several at once allow key rotation. ``etc/fieldkit/operators/*.pem`` holds, the
same way, the operator keys allowed to change the device over serial (:mod:`.operators`): the
ops take ``"kind": "operator"`` for those (``"release"``, the default, for release keys).
``anchors_add`` refuses anything else (a private key, a certificate, another curve), names the
file after the key's fingerprint and writes it atomically; ``anchors_remove`` removes every file
holding the key. Each change is recorded in the device journal (``anchors.add``,
``anchors.remove``; ``operators.add``, ``operators.remove`` for operator keys).
"""

import os
import stat

from fieldkit.agent import omsverify
from fieldkit.agent.fields import get_str, shorten
from fieldkit.agent.files import atomic_write, open_nofollow
from fieldkit.agent.protocol import RemoteError

MAX_ANCHORS = 64


def file_name(key):
    """``key-<first 16 hex digits of sha256(DER)>.pem``: stable, path-safe, from the fingerprint's hash."""
    import hashlib
    return "key-%s.pem" % hashlib.sha256(key.der).hexdigest()[:16]


def load(fs, trust_dir, dedup=True):
    """``(keys, problems)``: PublicKey objects (``.file`` set) and ``[{"file", "problem"}]`` for files
    in the trust directory that are not usable keys (reported, never trusted)."""
    keys, problems = [], []
    try:
        names = sorted(n for n in os.listdir(trust_dir) if n.endswith(".pem"))
    except FileNotFoundError:
        return keys, problems
    except OSError as exc:
        raise RemoteError("io_error", "cannot read the trust directory %s: %s"
                          % (fs.device_path(trust_dir), exc.strerror or exc))
    for name in names[:MAX_ANCHORS * 4]:
        full = os.path.join(trust_dir, name)
        where = fs.device_path(full)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                raise RemoteError("bad_key", "not a regular file")
            fd = open_nofollow(full, where, os.O_RDONLY)
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(omsverify.MAX_PEM + 1)
            key = omsverify.load_public_pem(data, where)
        except RemoteError as exc:
            if exc.code == "no_verifier":
                raise
            problems.append({"file": where, "problem": exc.message})
            continue
        except OSError as exc:
            problems.append({"file": where, "problem": exc.strerror or str(exc)})
            continue
        key.file = where
        if not dedup or all(k.fingerprint != key.fingerprint for k in keys):
            keys.append(key)
    return keys if not dedup else keys[:MAX_ANCHORS], problems


def _entry(key):
    return {"fingerprint": key.fingerprint, "hint": key.hint, "file": key.file, "pem": key.pem.decode("ascii")}


KINDS = ("release", "operator")


def kind_arg(args):
    """``"release"`` (default) or ``"operator"``."""
    kind = get_str(args, "kind", "release", limit=20)
    if kind not in KINDS:
        raise RemoteError("bad_args", "kind must be release or operator, got %s" % shorten(kind, 40))
    return kind


def key_dir(store, kind):
    return store.operators_dir if kind == "operator" else store.trust_dir


def list_op(fs, trust_dir, req, operators_dir=None):
    keys, problems = load(fs, trust_dir)
    out = {"dir": fs.device_path(trust_dir), "keys": [_entry(k) for k in keys], "invalid": problems,
           "verifier": omsverify.backend_name()}
    if operators_dir is not None:
        ops, op_problems = load(fs, operators_dir)
        out.update(operators_dir=fs.device_path(operators_dir), operator_keys=[_entry(k) for k in ops],
                   operators_invalid=op_problems)
    return out


def store_list_op(store, req):
    return list_op(store.fs, store.trust_dir, req, store.operators_dir)


def store_add_op(store, req):
    kind = kind_arg(req.args)
    out = add_op(store.fs, key_dir(store, kind), req, store.journal, kind)
    if kind == "operator":  # a release key's answer stays what older laptops know
        out["kind"] = kind
    return out


def store_remove_op(store, req):
    kind = kind_arg(req.args)
    out = remove_op(store.fs, key_dir(store, kind), req, store.journal, kind)
    if kind == "operator":
        out["kind"] = kind
    return out


def add_op(fs, trust_dir, req, journal, kind="release"):
    pem = get_str(req.args, "pem", required=True, limit=omsverify.MAX_PEM)
    key = omsverify.load_public_pem(pem, "the key")
    keys, _ = load(fs, trust_dir)
    for k in keys:
        if k.fingerprint == key.fingerprint:
            return {"fingerprint": k.fingerprint, "hint": k.hint, "file": k.file, "added": False}
    if len(keys) >= MAX_ANCHORS:
        raise RemoteError("too_many", "the device already holds %d %s keys; remove one first" % (len(keys), kind))
    full = os.path.join(trust_dir, file_name(key))
    fs.makedirs(full, fs.device_path(full))
    try:
        atomic_write(full, key.pem, mode=0o644)
    except OSError as exc:
        raise RemoteError("no_permission" if exc.errno in (1, 13) else "io_error",
                          "cannot write %s: %s%s" % (fs.device_path(full), exc.strerror or exc, _fix(exc, kind)))
    key.file = fs.device_path(full)
    journal("operators.add" if kind == "operator" else "anchors.add",
            {"fingerprint": key.fingerprint, "hint": key.hint, "file": key.file})
    return {"fingerprint": key.fingerprint, "hint": key.hint, "file": key.file, "added": True}


def remove_op(fs, trust_dir, req, journal, kind="release"):
    fp = get_str(req.args, "fingerprint", required=True, limit=100)
    removed = []
    keys, _ = load(fs, trust_dir, dedup=False)  # the same key may sit in several files
    for k in keys:
        if k.fingerprint == fp:
            full = fs.resolve(k.file)
            try:
                os.unlink(full)
            except OSError as exc:
                raise RemoteError("no_permission" if exc.errno in (1, 13) else "io_error",
                                  "cannot remove %s: %s%s" % (k.file, exc.strerror or exc, _fix(exc, kind)))
            removed.append(k.file)
    if not removed:
        raise RemoteError("not_found", "the device has no %s key %s (fieldkit anchors list shows its keys)"
                          % (kind, shorten(fp, 80)))
    journal("operators.remove" if kind == "operator" else "anchors.remove",
            {"fingerprint": fp, "files": removed})
    return {"removed": removed}


def _fix(exc, kind="release"):
    if getattr(exc, "errno", None) in (1, 13):
        if kind == "operator":
            return ("; the operators directory belongs to root (a key there may change the device): set "
                    "become = \"sudo\" in the device profile, or bake the key into the image "
                    "(fieldkit agent bundle --operator-key)")
        return ("; the trust directory belongs to root: add the login user to the group fieldkit "
                "(group-writable layout) or set become = \"sudo\" in the device profile")
    return ""
