"""``models_list``, ``models_verify``, ``model_remove`` (stdlib only, Python 3.6 syntax).

``models_verify`` re-hashes every installed version against its own ``model.sig``, verified again
against the device's trust anchors of today, and names each bad file; it also reports a
``current`` or ``previous`` pointer that leads nowhere. ``model_remove`` never removes the active
version nor one a pending activation needs; the directory is first renamed aside
(``NAME/.trash-...``, finished by recovery if interrupted) so a half-removed version never looks
installed.
"""

import os
import shutil

from fieldkit.agent.fields import get_bool, get_str
from fieldkit.agent.models import check_name
from fieldkit.agent.protocol import RemoteError
from fieldkit.agent.releasefmt import check_model_name, version_key
from fieldkit.agent.staging import operator, verify_version


def _names(store, args):
    name = args.get("name")
    if name is None:
        return store.names()
    check_model_name(name)
    if name not in store.names():
        raise RemoteError("model_not_installed", "no model %s is installed on the device" % name)
    return [name]


def _sorted_versions(versions):
    return sorted(versions, key=lambda v: (version_key(v), v))


def _is_sha256(text):
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def list_op(store, req):
    with_digest = get_bool(req.args, "digest")  # asked for: an older laptop gets the answer it knows
    out = []
    for name in store.names():
        entry = {"name": name, "active": store.pointer(name, "current"), "previous": store.pointer(name, "previous"),
                 "installed": _sorted_versions(store.versions(name)), "floor": None, "state": None, "signer": None,
                 "installed_at": None, "installed_by": None}
        if with_digest:
            entry["digest"] = None
        try:
            state = store.read_state(name)
        except RemoteError as exc:  # damaged state.json: nothing is committed until it is restored
            entry.update(floor=0, state="pending", problem=exc.message)
            out.append(entry)
            continue
        entry["floor"] = state["floor"]
        entry["state"] = state["state"]
        act = state.get("activation")
        if act:
            entry["pending"] = {"target": act.get("target"), "step": act.get("step"), "started": act.get("started"),
                                "by": act.get("by"), "reason": act.get("reason")}
        record = state["installed"].get(entry["active"]) if entry["active"] else None
        if isinstance(record, dict):
            for k in ("signer", "installed_at", "installed_by"):
                entry[k] = record.get(k) if isinstance(record.get(k), str) else None
            digest = record.get("digest")
            if with_digest and isinstance(digest, str) and _is_sha256(digest):  # else unknown, never a bad answer
                entry["digest"] = digest
        out.append(entry)
    return {"models": out}


def verify_op(store, req):
    if req.args.get("name") is not None:
        get_str(req.args, "name", limit=64)
    out = []
    for name in _names(store, req.args):
        versions = store.versions(name)
        for version in _sorted_versions(versions):
            problems = []
            try:
                verify_version(store, name, version, req.check_cancel)
            except RemoteError as exc:
                if exc.code == "cancelled":
                    raise
                problems.append("%s: %s" % (exc.code, exc.message))
            out.append({"name": name, "version": version, "ok": not problems, "problems": problems})
        for which in ("current", "previous"):
            target = store.pointer(name, which)
            if target is not None and target not in versions:
                out.append({"name": name, "version": which, "ok": False,
                            "problems": ["%s/%s points to %s, which is not installed" % (name, which, target)]})
    return {"models": out}


def remove_op(store, req, locks):
    args = req.args
    name = check_model_name(args.get("name"))
    version = check_name(args.get("version"), "version")
    by = operator(args)
    with locks.holding(store, name):
        if version not in store.versions(name):
            raise RemoteError("version_not_installed", "%s %s is not installed on the device" % (name, version))
        state = store.read_state(name)
        if store.pointer(name, "current") == version:
            raise RemoteError("active_version", "%s %s is the active version; activate another one first" % (name, version))
        act = state.get("activation")
        if state["state"] == "pending" and act and version in (act.get("target"), act.get("previous"),
                                                               act.get("prev_previous")):
            raise RemoteError("pending", "the pending activation of %s needs %s; commit or revert it first"
                              % (name, version))
        if store.pointer(name, "previous") == version:
            store.set_pointer(name, "previous", None)
        trash = os.path.join(store.model_dir(name), ".trash-%s-%d" % (version, os.getpid()))
        os.rename(store.version_path(name, version), trash)
        shutil.rmtree(trash, ignore_errors=True)
        state["installed"].pop(version, None)
        store.add_history(state, "remove", version=version, by=by)
        store.write_state(name, state)
    store.journal("model.remove", {"name": name, "version": version, "by": by})
    return {"removed": version}
