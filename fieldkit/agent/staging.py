"""Installing a signed release: ``stage_open`` and ``release_install`` (stdlib only, Python 3.6 syntax).

The laptop opens a stage (its id comes from the release digest, so the same install run again
finds the same stage and resumes), uploads each file with ``put`` into the stage's directory,
then asks for ``release_install``. The device trusts nothing the laptop said: it verifies the
staged copy itself (:func:`fieldkit.agent.omsverify.verify_dir`: signature against its own trust
anchors, every file against the signed list), reads release.json in plain Python
(:mod:`.releasefmt`), checks the name, version and digest against the stage's claim, the floor
(``below_floor``, never overridable) and the version order (``downgrade`` unless asked), and moves
the directory into ``models/NAME/VERSION`` with one rename. An identical version already there is
reused (after verifying it); a different one with the same version is refused
(``version_conflict``).
"""

import json
import os
import re
import shutil
import stat

from fieldkit.agent import anchors, omsverify, releasefmt
from fieldkit.agent.devjournal import utc_now
from fieldkit.agent.fields import get_bool, get_sha256, get_str, shorten
from fieldkit.agent.files import atomic_write, fsync_dir, open_nofollow
from fieldkit.agent.protocol import RemoteError

STAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}-[0-9a-f]{32}$")
MAX_STAGE_FILES = 20000
_DISCARD = ("tampered", "symlink", "bad_path")  # a stage that failed so cannot be resumed


def operator(args):
    """Who asks: the optional ``by`` argument, else the device login and the SSH client address."""
    by = get_str(args, "by", limit=200)
    if by:
        return by
    try:
        import pwd
        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        user = str(os.getuid())
    client = (os.environ.get("SSH_CLIENT") or "").split(" ")[0]
    return user + ("@" + client if client else "")


def stage_id(name, digest):
    return "%s-%s" % (name, digest[:32])


def _read_small(full, where, limit):
    fd = open_nofollow(full, where, os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise RemoteError("bad_release", "%s is larger than %d bytes" % (where, limit))
    return data


def _list_stage(real):
    """``{relpath: {"size", "partial_size"}}``: complete files (size) and ``.part`` uploads."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(real):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for f in filenames:
            full = os.path.join(dirpath, f)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            rel = os.path.relpath(full, real).replace(os.sep, "/")
            if rel.endswith(".part"):
                entry = out.setdefault(rel[:-5], {"size": None, "partial_size": 0})
                entry["partial_size"] = st.st_size
            else:
                entry = out.setdefault(rel, {"size": None, "partial_size": 0})
                entry["size"] = st.st_size
            if len(out) > MAX_STAGE_FILES:
                raise RemoteError("too_large", "the stage holds more than %d files" % MAX_STAGE_FILES)
    return out


def installed_digest(store, name, version):
    """The subject digest in ``models/NAME/VERSION/model.sig`` (unverified), or None."""
    real = store.version_path(name, version)
    try:
        raw = omsverify.read_sig_file(real, store.where(real))
        _, payload, _ = omsverify.parse_bundle(raw, "model.sig")
        return omsverify.parse_statement(payload, "model.sig")[0]
    except (RemoteError, OSError):
        return None


def stage_open(store, req):
    args = req.args
    name = releasefmt.check_model_name(args.get("name"))
    version = releasefmt.check_version(args.get("version"))
    digest = get_sha256(args, "digest")
    if digest is None:
        raise RemoteError("bad_args", "digest is required (the release digest, 64 hex digits)")
    sid = stage_id(name, digest)
    real = store.stage_dir(sid)
    claim_path = store.stage_claim(sid)
    store.fs.makedirs(os.path.join(real, "x"), store.where(real) + "/")
    claim = {"stage": sid, "name": name, "version": version, "digest": digest}
    try:
        old = json.loads(_read_small(claim_path, store.where(claim_path), 1 << 16).decode("utf-8"))
    except (RemoteError, ValueError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict) or any(old.get(k) != v for k, v in claim.items()):
        claim.update(opened=utc_now(), by=operator(args))
        atomic_write(claim_path, json.dumps(claim, sort_keys=True).encode("utf-8") + b"\n")
        store.journal("release.staged", {"name": name, "version": version, "digest": digest, "stage": sid,
                                         "by": claim["by"]})
    files = _list_stage(real)
    return {"stage": sid, "dir": store.where(real), "files": files,
            "installed": installed_digest(store, name, version) == digest}


def _claim(store, sid):
    if not isinstance(sid, str) or not STAGE_ID.match(sid):
        raise RemoteError("bad_args", "stage must be a stage id from stage_open, got %s" % shorten(sid, 80))
    path = store.stage_claim(sid)
    try:
        claim = json.loads(_read_small(path, store.where(path), 1 << 16).decode("utf-8"))
    except RemoteError as exc:
        if exc.code == "not_found":
            raise RemoteError("not_found", "the device has no stage %s (open it with stage_open)" % sid)
        raise
    except (ValueError, UnicodeDecodeError):
        raise RemoteError("bad_stage", "%s is damaged; open the stage again" % store.where(path))
    if not isinstance(claim, dict) or any(not isinstance(claim.get(k), str) for k in ("name", "version", "digest")):
        raise RemoteError("bad_stage", "%s is damaged; open the stage again" % store.where(path))
    return claim


def read_release(store, real, label):
    """release.json of the directory ``real``, checked (:func:`releasefmt.parse_release`)."""
    where = "%s/%s" % (label, releasefmt.RELEASE_FILE)
    try:
        raw = _read_small(os.path.join(real, releasefmt.RELEASE_FILE), where, releasefmt.MAX_RELEASE_JSON)
    except RemoteError as exc:
        if exc.code == "not_found":
            raise RemoteError("bad_release", "%s is missing" % where)
        raise
    return releasefmt.parse_release(raw, where)


def check_release(store, real, label, statement, name=None, version=None):
    """release.json of a verified directory: valid, covered by the signature, the expected name/version."""
    release = read_release(store, real, label)
    where = "%s/%s" % (label, releasefmt.RELEASE_FILE)
    for rel in releasefmt.covered_files(release):
        if rel not in statement.resources:
            raise RemoteError("bad_release", "%s names %s, which the signature does not cover" % (where, rel))
    if name is not None and release["name"] != name:
        raise RemoteError("bad_release", "%s is for model %s, not %s" % (where, shorten(release["name"]), name))
    if version is not None and release["version"] != version:
        raise RemoteError("bad_release", "%s is version %s, not %s" % (where, shorten(release["version"]), version))
    return release


def verify_version(store, name, version, check=None):
    """Verify an installed ``models/NAME/VERSION`` against today's anchors: (statement, release, signer)."""
    real = store.version_path(name, version)
    label = store.where(real)
    keys, _ = anchors.load(store.fs, store.trust_dir)
    statement = omsverify.verify_dir(real, label, keys, check)
    release = check_release(store, real, label, statement, name, version)
    return statement, release


def _discard(path):
    shutil.rmtree(path, ignore_errors=True)


def release_install(store, req, locks):
    args = req.args
    sid = args.get("stage")
    downgrade = get_bool(args, "downgrade")
    by = operator(args)
    claim = _claim(store, sid)
    name, version, digest = claim["name"], claim["version"], claim["digest"]
    real = store.stage_dir(sid)
    label = store.where(real)
    if os.path.islink(real) or not os.path.isdir(real):
        raise RemoteError("not_found", "the stage directory %s is gone (or not a directory); open the stage again"
                          % label)
    store.fs.check_real(real, label)
    keys, _ = anchors.load(store.fs, store.trust_dir)
    try:
        statement = omsverify.verify_dir(real, label, keys, req.check_cancel)
        if statement.digest != digest:
            raise RemoteError("tampered", "%s holds a release with digest %s, not the %s the stage was opened for"
                              % (label, statement.digest, digest))
        release = check_release(store, real, label, statement, name, version)
    except RemoteError as exc:
        if exc.code in _DISCARD:
            _discard(real)
            exc.message += " (the staged copy was discarded: transfer the release again)"
        store.journal("release.refused", {"name": name, "version": version, "digest": digest, "code": exc.code,
                                          "message": exc.message[:500], "by": by})
        raise
    sv = release["security_version"]
    signer = statement.signer.fingerprint
    with locks.holding(store, name):
        state = store.read_state(name)
        active = store.pointer(name, "current")
        if sv < state["floor"]:
            store.journal("release.refused", {"name": name, "version": version, "digest": digest,
                                              "code": "below_floor", "security_version": sv, "floor": state["floor"]})
            raise RemoteError("below_floor", "%s %s has security_version %d, below the device's floor %d for %s: "
                              "it would undo a security fix and is never installed"
                              % (name, version, sv, state["floor"], name))
        if (active and not downgrade and releasefmt.SEMVER.match(active)
                and releasefmt.version_key(version) < releasefmt.version_key(active)):
            raise RemoteError("downgrade", "%s %s is older than the active version %s; install it with --downgrade "
                              "if that is intended" % (name, version, active))
        target = store.version_path(name, version)
        already = False
        if os.path.lexists(target):
            have = installed_digest(store, name, version)
            if have is not None and have != digest:
                raise RemoteError("version_conflict", "%s %s is already installed with another signature (digest "
                                  "%s...); remove it first (fieldkit models remove) or give the release a new version"
                                  % (name, version, have[:16]))
            try:
                verify_version(store, name, version, req.check_cancel)
                already = True
            except RemoteError as exc:  # a damaged copy of the same release: replace it
                store.journal("release.repair", {"name": name, "version": version, "problem": exc.message[:500]})
                trash = os.path.join(store.model_dir(name), ".trash-%s-%d" % (version, os.getpid()))
                os.rename(target, trash)
                _discard(trash)
        if already:
            _discard(real)
        else:
            _place(store, real, label, target, statement)
        try:
            os.unlink(store.stage_claim(sid))
        except OSError:
            pass
        fsync_dir(store.staging_dir)
        state = store.read_state(name)
        record = {"digest": digest, "signer": signer, "security_version": sv, "installed_at": utc_now(),
                  "installed_by": by, "smoke": isinstance(release.get("smoke"), dict)}
        if not already or version not in state["installed"]:
            state["installed"][version] = record
            store.add_history(state, "installed", version=version, digest=digest, by=by)
            store.write_state(name, state)
    store.journal("release.installed", {"name": name, "version": version, "digest": digest, "signer": signer,
                                        "security_version": sv, "already_installed": already, "by": by})
    return {"name": name, "version": version, "security_version": sv, "digest": digest, "signer": signer,
            "dir": store.where(target), "already_installed": already, "active": active, "floor": state["floor"],
            "smoke": isinstance(release.get("smoke"), dict)}


def _place(store, real, label, target, statement):
    """Move the verified stage to ``target`` with one rename (a copy, verified again, across filesystems)."""
    for rel in statement.skipped:  # ignored by the signature: not part of the release, not installed
        if rel == omsverify.SIG_FILE:
            continue
        full = os.path.join(real, *rel.split("/"))
        if os.path.isdir(full) and not os.path.islink(full):
            _discard(full)
        elif os.path.lexists(full):
            os.unlink(full)
    top = os.path.dirname(target)
    os.makedirs(top, exist_ok=True)
    store.fs.check_parent(target)
    try:
        os.rename(real, target)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: staging and models on different filesystems
            raise RemoteError("io_error", "cannot move %s to %s: %s" % (label, store.where(target), exc.strerror))
        tmp = os.path.join(top, ".install-%s-%d" % (os.path.basename(target), os.getpid()))
        _discard(tmp)
        shutil.copytree(real, tmp, symlinks=True)
        omsverify.check_files(tmp, store.where(tmp), statement)
        for dirpath, _, filenames in os.walk(tmp):
            for f in filenames:
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.rename(tmp, target)
        _discard(real)
    fsync_dir(top)
    fsync_dir(os.path.dirname(real))
