"""What runs where, against what should run there: devices held against a verified site manifest.

``check_versions`` takes several devices at once (a bounded pool, one shared operator journal, like
``health.check_many``); per device it opens a session, lists the installed models, has the device
re-hash every installed file against its signature, and compares with the manifest's entries for
that device (:func:`fieldkit.manifest.expected_for`). Each model gets a status:

=============  ===========================================================================================
``ok``         the expected version is active (and its digest, when the manifest gives one)
``drift``      another version (or another release with the same version) is active, or the agent is
               older than the entry's ``min_agent``
``missing``    expected, but not installed or not active
``unexpected`` installed, but the manifest expects nothing of that model on this device
``modified``   files on the device no longer match their signature
``unreachable`` the device could not be reached or did not answer; its expected models are listed so
=============  ===========================================================================================

A device's status is its worst model status, in the order modified > drift > missing > unexpected >
unreachable > ok. An unreachable device never stops the others; each wait has a timeout. Every
device checked gets one ``versions.check`` entry in the operator journal.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from fieldkit.errors import FieldkitError
from fieldkit.manifest import Expectation, Manifest, expected_for

log = logging.getLogger(__name__)

__all__ = ["STATUSES", "ModelVersion", "DeviceVersions", "worst_status", "compare", "compare_device",
           "check_device", "check_versions", "exit_code", "remember_manifest", "remembered_paths",
           "remembered_manifest"]

STATUSES = ("ok", "unreachable", "unexpected", "missing", "drift", "modified")
"""Every status word, least severe first."""
_RANK = {s: i for i, s in enumerate(STATUSES)}


def worst_status(statuses: Iterable[str]) -> str:
    """The worst of ``statuses`` (modified > drift > missing > unexpected > unreachable > ok); ``ok`` for none."""
    return max(statuses, key=lambda s: _RANK[s], default="ok")


@dataclass
class ModelVersion:
    """One model on one device: expected vs active."""

    name: str
    expected: str | None
    active: str | None
    status: str
    expected_digest: str | None = None
    active_digest: str | None = None
    rule: str | None = None
    """The manifest entry that applied (``group = "line3"``), None for an unexpected model."""
    message: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "expected": self.expected, "active": self.active, "status": self.status,
                "expected_digest": self.expected_digest, "active_digest": self.active_digest, "rule": self.rule,
                "message": self.message}


@dataclass
class DeviceVersions:
    """One device's result."""

    device: str
    target: str
    profile: str
    status: str
    models: list[ModelVersion] = field(default_factory=list)
    agent_version: str | None = None
    error: str | None = None
    exit_code: int = 0
    """0 all ok, 1 a model is not as expected, 3 not reached, 4 the device failed the operation."""

    def to_json(self) -> dict:
        doc = {"device": self.device, "status": self.status, "models": [m.to_json() for m in self.models],
               "target": self.target, "profile": self.profile, "agent_version": self.agent_version}
        if self.error:
            doc["error"] = self.error
        return doc


def exit_code(results: Iterable[DeviceVersions]) -> int:
    """0 all ok; 1 any drift, missing, unexpected or modified; else 4 when a device failed the
    check (2 for a device the inventory cannot resolve), 3 when the only problem is unreachable devices."""
    results = list(results)
    if any(r.status not in ("ok", "unreachable") for r in results):
        return 1
    failed = [r.exit_code for r in results if r.status == "unreachable" and r.exit_code not in (0, 3)]
    if failed:  # the device failed the check (4), a bad inventory entry (2), cancelled (130)
        return 4 if 4 in failed else failed[0]
    return 3 if any(r.status == "unreachable" for r in results) else 0


def _older(agent: str | None, minimum: str) -> bool:
    from fieldkit.release import compare_versions

    if agent is None:
        return True
    try:
        return compare_versions(agent, minimum) < 0
    except ValueError:
        return True  # an agent version that is not semver cannot be shown to be recent enough


def compare(expectations: list[Expectation], listed: list[dict], checks: list[dict] | None,
            agent_version: str | None) -> list[ModelVersion]:
    """Expected entries against the device's ``models_list`` entries and ``models_verify`` checks
    (None when the device could not verify); one :class:`ModelVersion` per model, sorted by name."""
    by_name = {m["name"]: m for m in listed}
    bad: dict[str, list[str]] = {}
    for c in checks or []:
        if not c["ok"]:
            bad.setdefault(c["name"], []).extend(f"{c['version']}: {p}" for p in c["problems"] or ["does not verify"])
    out: list[ModelVersion] = []
    for e in expectations:
        m = by_name.get(e.model)
        active = m["active"] if m else None
        digest = m.get("digest") if m else None
        mv = ModelVersion(e.model, e.version, active, "ok", e.digest, digest, e.selector)
        notes: list[str] = []
        if m is None or not m["installed"]:
            mv.status, notes = "missing", [f"{e.model} is not installed"]
        elif active is None:
            mv.status = "missing"
            notes.append(f"{e.model} is installed ({', '.join(m['installed'][:5])}) but no version is active")
        elif active != e.version:
            mv.status = "drift"
            notes.append(f"{active} is active, {e.version} is expected")
        elif e.digest is not None and digest is None:
            mv.status = "drift"
            notes.append("the device does not report the active release's digest (an older agent): the "
                         "manifest's digest cannot be confirmed")
        elif e.digest is not None and digest != e.digest:
            mv.status = "drift"
            notes.append(f"{active} is active but it is another release: digest {digest[:16]}..., the manifest "
                         f"expects {e.digest[:16]}...")
        if e.min_agent is not None and _older(agent_version, e.min_agent):
            mv.status = worst_status([mv.status, "drift"])
            notes.append(f"agent {agent_version or 'of unknown version'} is older than min_agent {e.min_agent}")
        if e.model in bad:
            mv.status = "modified"
            notes.insert(0, "files no longer match their signature: " + "; ".join(bad[e.model][:3]))
        elif checks is None and m is not None:
            notes.append("installed files not verified")
        mv.message = "; ".join(notes) if notes else f"{active} as expected"
        out.append(mv)
    expected_names = {e.model for e in expectations}
    for name in sorted(set(by_name) - expected_names):
        m = by_name[name]
        if not m["installed"] and m["active"] is None:
            continue
        mv = ModelVersion(name, None, m["active"], "unexpected", None, m.get("digest"), None,
                          f"installed ({', '.join(m['installed'][:5])}) but not in the manifest for this device")
        if name in bad:
            mv.status = "modified"
            mv.message = "files no longer match their signature: " + "; ".join(bad[name][:3]) + "; " + mv.message
        out.append(mv)
    return sorted(out, key=lambda mv: mv.name)


def compare_device(manifest: Manifest, device: str, groups: Iterable[str], profile: str | None, listed: list[dict],
                   checks: list[dict] | None = None, agent_version: str | None = None) -> tuple[str, list[ModelVersion]]:
    """One device's ``models_list`` entries against the manifest's entries for it (:func:`expected_for`
    then :func:`compare`): the device's (worst) status and one :class:`ModelVersion` per model. Pure:
    the caller already has the listing (the TUI's fleet reuses the one its model column reads)."""
    models = compare(expected_for(manifest, device, groups, profile), listed, checks, agent_version)
    return worst_status(m.status for m in models), models


# ---- the site manifest the TUI remembers -----------------------------------------------------------

def remember_manifest(home: Any, manifest: Manifest, key_path: Any) -> None:
    """Remember a verified manifest and its release public key in the home (``home.site_manifest``),
    so the TUI loads it again; both paths kept absolute. Only the paths: it is re-verified every time."""
    from pathlib import Path

    from fieldkit.fsutil import atomic_write_json

    assert manifest.path is not None
    home.ensure()
    atomic_write_json(home.site_manifest, {"manifest": str(Path(manifest.path).resolve()),
                                           "key": str(Path(key_path).resolve()),
                                           "signer": manifest.signer, "sha256": manifest.sha256}, mode=0o600)


def remembered_paths(home: Any) -> tuple[Any, Any] | None:
    """The remembered (manifest path, key path), None when none is remembered; ConfigError for a
    damaged file."""
    import json
    from pathlib import Path

    from fieldkit.errors import ConfigError

    path = home.site_manifest
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the remembered site manifest ({type(exc).__name__})",
                          hint="load one again: fieldkit --manifest FILE.json --manifest-key PUB.pem") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifest"), str) or not isinstance(doc.get("key"), str):
        raise ConfigError(f"{path}: expected {{\"manifest\": PATH, \"key\": PATH}}",
                          hint="load one again: fieldkit --manifest FILE.json --manifest-key PUB.pem")
    return Path(doc["manifest"]), Path(doc["key"])


def remembered_manifest(home: Any) -> Manifest | None:
    """The manifest remembered in the home, verified again with its remembered key; None when none is
    remembered. ManifestError (it no longer verifies) or ConfigError (a file is gone) otherwise."""
    from fieldkit.manifest import verify_manifest

    paths = remembered_paths(home)
    if paths is None:
        return None
    return verify_manifest(paths[0], [paths[1]])


def _journal_details(manifest: Manifest, result: DeviceVersions) -> dict:
    return {"manifest": manifest.sha256, "manifest_signer": manifest.signer, "status": result.status,
            "agent_version": result.agent_version,
            "models": [{"name": m.name, "expected": m.expected, "active": m.active, "status": m.status}
                       for m in result.models]}


def check_device(spec: str, home: Any, manifest: Manifest, *, journal: Any = None, timeout: float = 15.0,
                 verify_timeout: float = 1800.0, cancel: threading.Event | None = None) -> DeviceVersions:
    """One device against the manifest. Never raises for device problems: an unreachable device (or
    one that fails the operation) is a result with status ``unreachable`` and the reason."""
    from fieldkit.devices import open_session, resolve
    from fieldkit.inventory import get_device
    from fieldkit.modelstore import list_models, verify_models

    try:
        dev = resolve(spec, home)
        entry = get_device(home, dev.name)
    except FieldkitError as exc:
        return DeviceVersions(spec[:120], spec[:120], "-", "unreachable", error=str(exc), exit_code=exc.exit_code)
    expectations = expected_for(manifest, dev.name, entry.groups if entry else (), dev.profile.name)
    result = DeviceVersions(dev.name, dev.target, dev.profile.name, "ok")
    session = None
    try:
        session = open_session(dev, home, journal=journal, timeout=timeout)
        with session:
            result.agent_version = session.hello.agent_version
            with session.operation("versions.check", {"manifest": manifest.sha256}) as op:
                if cancel is not None and cancel.is_set():
                    from fieldkit.errors import Cancelled
                    raise Cancelled("versions check cancelled")
                listed = list_models(session)["models"]
                checks = None
                if listed and session.supports("models_verify"):
                    checks = verify_models(session)["models"]
                result.status, result.models = compare_device(manifest, dev.name, entry.groups if entry else (),
                                                              dev.profile.name, listed, checks, result.agent_version)
                result.exit_code = 0 if result.status == "ok" else 1
                op.details.update(_journal_details(manifest, result))
                if result.status != "ok":
                    op.outcome = "failed"
        return result
    except FieldkitError as exc:
        code = exc.exit_code
        message = str(exc)
    except Exception as exc:  # a fault of fieldkit's: this device's result says so, the others go on
        log.debug("versions check of %s failed", spec, exc_info=True)
        code, message = 4, f"internal error: {type(exc).__name__}: {exc}"
    result.status = "unreachable"
    result.error = message
    result.exit_code = 3 if code == 3 else (130 if code == 130 else 4)
    result.models = [ModelVersion(e.model, e.version, None, "unreachable", e.digest, None, e.selector,
                                  "not checked: the device was not reached" if code == 3
                                  else "not checked: the device failed the check") for e in expectations]
    if session is None and journal is not None:  # never opened: the session did not journal this check
        journal.record(dev.name, "versions.check", "cancelled" if code == 130 else "failed",
                       {**_journal_details(manifest, result), "error": message[:500]})
    return result


def check_versions(specs: list[str], home: Any, manifest: Manifest, max_workers: int = 8, *,
                   timeout: float = 15.0, cancel: threading.Event | None = None,
                   **kw: Any) -> list[DeviceVersions]:
    """Several devices at once (bounded pool, one shared journal), in the order given. One device's
    failure never stops the others."""
    from fieldkit.journal import Journal

    with Journal.open(home) as journal:
        def one(spec: str) -> DeviceVersions:
            return check_device(spec, home, manifest, journal=journal, timeout=timeout, cancel=cancel, **kw)

        if len(specs) <= 1:
            return [one(s) for s in specs]
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(specs)))) as pool:
            return list(pool.map(one, specs))
