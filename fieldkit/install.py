"""Install and roll back signed model releases on a device (the service behind `fieldkit install`
and `fieldkit rollback`).

The life of a model on a device (DESIGN.md, docs/releases.md)::

    verify on the laptop (signature against the device's own anchors, floor, version)
      -> transfer into the device's staging area (resumable)
      -> the device verifies the staged copy itself and places it at models/NAME/VERSION
      -> activate (current/previous swapped atomically, the inference service restarted)
      -> smoke test on the device (signed golden inputs and outputs)
      -> commit (the floor rises to security_version) | revert (the previous version back)

Every stage is journaled on the laptop (``release.install``, ``model.activate``, ``model.smoke``,
``model.commit`` / ``model.revert``, ``model.rollback``) with the release's name, version, digest
and signer; the device keeps its own journal of the same steps. A stage that fails before the
activation leaves the device as it was; one that fails after it is undone by the device itself
(the next agent start, ``fieldkit-agent recover`` at boot, or the next connect).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fieldkit.errors import Cancelled, CheckFailed, ConfigError, DeviceError, FieldkitError
from fieldkit.textfmt import TransferMeter

ProgressFn = Callable[[dict], None]
RESULTS = ("committed", "reverted", "refused", "failed")


@dataclass
class Stage:
    name: str
    status: str  # ok | failed | skipped | refused
    seconds: float
    detail: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3), "detail": self.detail}


@dataclass
class InstallResult:
    """What an install or a rollback did. ``result`` is one of :data:`RESULTS`."""

    device: str
    release: dict  # name, version, digest, signer
    before: str | None
    after: str | None
    result: str
    message: str = ""
    stages: list[Stage] = field(default_factory=list)
    smoke: dict | None = None
    error: FieldkitError | None = field(default=None, repr=False)

    @property
    def exit_code(self) -> int:
        if self.result == "committed":
            return 0
        if self.error is not None:
            return self.error.exit_code
        return 1

    def to_json(self) -> dict:
        return {"device": self.device, "release": self.release, "before": self.before, "after": self.after,
                "result": self.result, "message": self.message, "stages": [s.to_json() for s in self.stages],
                "smoke": self.smoke}


class _Stages:
    """Times and records each stage; a failed stage re-raises after being written down."""

    def __init__(self, result: InstallResult, progress: ProgressFn | None) -> None:
        self.result = result
        self.progress = progress

    def emit(self, **data: Any) -> None:
        if self.progress is not None:
            try:
                self.progress(data)
            except Exception:
                pass  # a broken display must not break an install

    def run(self, name: str, fn: Callable[[], Any], message: str) -> Any:
        self.emit(stage=name, message=message)
        t0 = time.monotonic()
        try:
            value = fn()
        except FieldkitError as exc:
            refused = isinstance(exc, (CheckFailed, ConfigError)) or (
                isinstance(exc, DeviceError) and exc.code in REFUSALS)
            self.result.stages.append(Stage(name, "refused" if refused else "failed", time.monotonic() - t0,
                                            exc.message))
            raise
        self.result.stages.append(Stage(name, "ok", time.monotonic() - t0))
        return value

    def skip(self, name: str, why: str) -> None:
        self.result.stages.append(Stage(name, "skipped", 0.0, why))


# The device's refusals of a release (docs/releases.md): the release is wrong for this device,
# nothing was changed there.
REFUSALS = frozenset({
    "no_anchors", "not_signed", "bad_signature", "untrusted_key", "tampered", "extra_file", "missing_file",
    "symlink", "bad_path", "bad_release", "below_floor", "downgrade", "no_onnxruntime", "no_smoke_set",
    "active_version", "not_installed", "version_not_installed",
    "not_authenticated",  # over serial: the session may not change the device (docs/releases.md)
})


def device_anchor_keys(session: Any) -> list[Any]:
    """The release keys the device trusts, as public keys (refuses a device that trusts none)."""
    from fieldkit.signing import load_public_key

    listed = session.call("anchors_list")
    keys = []
    for a in listed.keys:
        if a.pem:
            try:
                keys.append(load_public_key(a.pem))
            except ValueError:
                continue  # a damaged anchor on the device cannot sign anything
    if not listed.keys:
        raise DeviceError(f"{session.name} trusts no release key yet, so it would refuse every release",
                          code="no_anchors",
                          hint=f"add the release key once: `fieldkit anchors add {session.name} KEY.pub.pem`")
    return keys


def model_entry(session: Any, name: str) -> Any:
    """The device's record of model ``name`` (None when it has never been installed)."""
    listed = session.call("models_list")
    return next((m for m in listed.models if m.name == name), None)


def recover(session: Any) -> list[Any]:
    """Let the device finish or undo an activation a lost link interrupted (before anything else)."""
    if not session.supports("recover"):
        return []
    done = session.call("recover").recovered
    for r in done:
        session.record("model.recover", "ok", {"model": r.name, "action": r.action, "active": r.active})
    return done


def install_release(session: Any, release_dir: Path, *, downgrade: bool = False, no_smoke: bool = False,
                    confirm: Callable[[InstallResult], bool] | None = None,
                    progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> InstallResult:
    """Install the signed release in ``release_dir`` on the device of ``session``; see the module
    docstring. Returns the result (``committed``, ``reverted``, ``refused`` or ``failed``) with its
    stages; never leaves the device without a complete, verified active model."""
    from fieldkit.release import compare_versions, verify_release

    release_dir = Path(release_dir)
    result = InstallResult(session.name, {"name": None, "version": None, "digest": None, "signer": None},
                           None, None, "failed")
    stages = _Stages(result, progress)
    with session.operation("release.install", {"release": str(release_dir), "downgrade": downgrade,
                                               "no_smoke": no_smoke}) as op:
        try:
            recover(session)

            def verify() -> Any:
                rel = verify_release(release_dir, device_anchor_keys(session))
                result.release = {"name": rel.name, "version": rel.version, "digest": rel.digest,
                                  "signer": rel.signer}
                entry = model_entry(session, rel.name)
                result.before = result.after = entry.active if entry else None
                _check_gate(session, rel, entry, downgrade, no_smoke, compare_versions)
                return rel

            rel = stages.run("verify", verify, f"verifying {release_dir.name} against the device's release keys")
            op.details.update(result.release)
            if confirm is not None and not confirm(result):
                raise Cancelled(f"install of {rel.name} {rel.version} on {session.name} not confirmed; "
                                "nothing was changed")
            staged = stages.run("transfer", lambda: _transfer(session, rel, stages, cancel),
                                f"copying {rel.name} {rel.version} to {session.name}")
            placed = stages.run("place", lambda: session.call(
                "release_install", {"stage": staged, "downgrade": downgrade}, timeout=600, cancel=cancel),
                "the device verifies its copy and places it")
            session.record("release.placed", "ok", {**result.release, "already_installed": placed.already_installed})
            _activate_smoke_commit(session, rel.name, rel.version, "install", no_smoke or not placed.smoke,
                                   result, stages, cancel)
        except FieldkitError as exc:
            result.error = exc
            if result.result not in ("reverted",):
                result.result = "refused" if (result.stages and result.stages[-1].status == "refused") else "failed"
            result.message = result.message or exc.message
            op.outcome = "refused" if result.result == "refused" else "failed"
            op.details.update(result=result.result, message=result.message,
                              stages=[s.to_json() for s in result.stages])
            if isinstance(exc, Cancelled):
                raise
            return result
        op.details.update(result=result.result, before=result.before, after=result.after,
                          stages=[s.to_json() for s in result.stages])
        if result.result != "committed":
            op.outcome = "failed"
    return result


def _check_gate(session: Any, rel: Any, entry: Any, downgrade: bool, no_smoke: bool, compare: Any) -> None:
    """Refuse on the laptop what the device would refuse, before any byte moves."""
    if entry is not None and rel.security_version < entry.floor:
        raise DeviceError(f"{rel.name} {rel.version} has security version {rel.security_version}, below the floor "
                          f"{entry.floor} of {session.name}: a security fix cannot be undone on this device",
                          code="below_floor",
                          hint="install a release with a security version at or above the floor")
    if entry is not None and entry.active and not downgrade and compare(rel.version, entry.active) < 0:
        raise ConfigError(f"{rel.name} {rel.version} is older than the active {entry.active} on {session.name}",
                          hint="add --downgrade to install an older version on purpose")
    if not no_smoke:
        if rel.manifest.smoke is None:
            raise ConfigError(f"{rel.name} {rel.version} carries no smoke set, so it cannot be proven on the device",
                              hint="install it with --no-smoke to accept it untested (journaled as such)")
        if not (session.hello.capabilities or {}).get("onnxruntime"):
            raise DeviceError(f"{session.name} has no onnxruntime, so the smoke test cannot run there",
                              code="no_onnxruntime",
                              hint="install onnxruntime on the device, or use --no-smoke (journaled as such)")


def _transfer(session: Any, rel: Any, stages: _Stages, cancel: threading.Event | None) -> str:
    """Upload every file of the release into the device's staging area, resuming what it holds."""
    opened = session.call("stage_open", {"name": rel.name, "version": rel.version, "digest": rel.digest})
    total = sum(f.size for f in rel.files)
    done = 0  # bytes of the release on the device (whole files and resumed parts included)
    plan = []
    for f in rel.files:
        have = opened.files.get(f.name)
        if have is not None and have.size == f.size:
            done += f.size  # already whole on the device: it re-hashes everything when placing
            continue
        offset = have.partial_size if have is not None and 0 < have.partial_size < f.size else 0
        done += offset
        plan.append((f, offset))
    meter = TransferMeter(total, done)  # rate over the last seconds of this run, ETA from it
    for f, offset in plan:
        base = done - offset  # release bytes before this file

        def on_bytes(pos: int, size: int, base: int = base, name: str = f.name) -> None:
            if meter.update(base + pos) or pos == size:  # and each file's end
                stages.emit(stage="transfer", file=name, **meter.fields(), message=f"copying {name}")

        session.upload(rel.directory / f.name, f"{opened.dir.rstrip('/')}/{f.name}", size=f.size, sha256=f.sha256,
                       offset=offset, progress=on_bytes, cancel=cancel, timeout=max(120.0, f.size / (64 * 1024)))
        done += f.size - offset
    return opened.stage


def _activate_smoke_commit(session: Any, name: str, version: str, reason: str, no_smoke: bool,
                           result: InstallResult, stages: _Stages, cancel: threading.Event | None) -> None:
    """The one activation gate of install and rollback: activate, smoke test, commit or revert."""
    service = session.profile.service.unit if session.profile.service else None
    details = {**{k: v for k, v in result.release.items() if v is not None}, "model": name, "version": version,
               "reason": reason}
    with session.operation("model.activate", details) as op:
        act = stages.run("activate", lambda: session.call(
            "model_activate", {"name": name, "version": version, "reason": reason, "service": service},
            timeout=300, cancel=cancel), f"activating {name} {version}")
        op.details.update(active=act.active, previous=act.previous, restarted=act.restarted)
    result.after = act.active
    if no_smoke:
        stages.skip("smoke", "skipped (--no-smoke)")
        session.record("model.smoke", "info", {**details, "skipped": "--no-smoke"})
    else:
        with session.operation("model.smoke", details) as op:
            smoke = stages.run("smoke", lambda: session.call("model_smoke", {"name": name}, timeout=900,
                                                             cancel=cancel),
                               f"smoke test of {name} {version} on the device")
            result.smoke = smoke.model_dump()
            op.details.update(passed=smoke.passed, message=smoke.message)
            if not smoke.passed:
                op.outcome = "failed"
        if not smoke.passed:
            with session.operation("model.revert", {**details, "why": smoke.message}) as op:
                rev = stages.run("revert", lambda: session.call(
                    "model_revert", {"name": name, "reason": f"smoke test failed: {smoke.message}",
                                     "service": service}, timeout=300),
                    f"smoke test failed: switching {name} back")
                op.details.update(active=rev.active)
            result.after = rev.active
            result.result = "reverted"
            result.message = (f"{name} {version} failed its smoke test on {session.name}: {smoke.message}; "
                              f"{rev.active or 'no version'} is active again")
            raise CheckFailed(result.message)
    with session.operation("model.commit", details) as op:
        com = stages.run("commit", lambda: session.call("model_commit", {"name": name}, timeout=120),
                         f"committing {name} {version}")
        op.details.update(floor=com.floor)
    result.after = com.active
    result.result = "committed"
    result.message = f"{name} {version} is active and committed on {session.name} (floor {com.floor})"


def rollback_model(session: Any, name: str, *, to: str | None = None, no_smoke: bool = False,
                   confirm: Callable[[InstallResult], bool] | None = None,
                   progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> InstallResult:
    """Make ``previous`` (or the installed version ``to``) active through the same smoke gate.
    The device refuses a version below its floor."""
    result = InstallResult(session.name, {"name": name, "version": to, "digest": None, "signer": None},
                           None, None, "failed")
    stages = _Stages(result, progress)
    with session.operation("model.rollback", {"model": name, "to": to}) as op:
        try:
            recover(session)
            entry = model_entry(session, name)
            if entry is None:
                raise DeviceError(f"no model {name} is installed on {session.name}", code="not_installed",
                                  hint=f"`fieldkit models {session.name}` lists what is installed")
            result.before = result.after = entry.active
            target = to or entry.previous
            if not target:
                raise DeviceError(f"{name} on {session.name} has no previous version to roll back to "
                                  f"(installed: {', '.join(entry.installed) or 'none'})", code="not_installed",
                                  hint="name one with --to VERSION")
            if target not in entry.installed:
                raise DeviceError(f"{name} {target} is not installed on {session.name} "
                                  f"(installed: {', '.join(entry.installed) or 'none'})",
                                  code="version_not_installed")
            if target == entry.active:
                raise ConfigError(f"{name} {target} is already the active version on {session.name}")
            result.release["version"] = target
            if confirm is not None and not confirm(result):
                raise Cancelled(f"rollback of {name} on {session.name} not confirmed; nothing was changed")
            op.details.update(before=entry.active, target=target)
            _activate_smoke_commit(session, name, target, "rollback", no_smoke, result, stages, cancel)
        except FieldkitError as exc:
            result.error = exc
            if result.result != "reverted":
                refused = result.stages[-1].status == "refused" if result.stages else \
                    isinstance(exc, (ConfigError, DeviceError))
                result.result = "refused" if refused else "failed"
            result.message = result.message or exc.message
            op.outcome = "refused" if result.result == "refused" else "failed"
            op.details.update(result=result.result, message=result.message)
            if isinstance(exc, Cancelled):
                raise
            return result
        op.details.update(result=result.result, after=result.after)
    return result
