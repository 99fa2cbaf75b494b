"""Staged rollout of one signed release to many devices: the service behind
``fieldkit install --all | --group G | DEV1 DEV2 ... DIR [--canary K] [--parallel P]``.

::

    plan_rollout: the release verified on the laptop once (nothing is touched when it does not verify)
      -> (the driver asks one confirmation for the whole rollout, listing the devices)
    run_rollout:
      -> canary wave: the first K devices (default 1); every one of them must commit
      -> the rest, at most P installs at once (default 4)

At the first device that does not commit (reverted by its smoke test, refused, failed, not
reachable) no new install starts; installs already running finish (each is atomic on its device)
and are reported; the devices never started are ``skipped`` and were not touched.

Each device goes through the one install path (:func:`fieldkit.install.install_release`) with its
own journal entries (connect, release.install, model.activate, model.smoke, model.commit|revert);
the rollout adds one ``release.rollout`` entry (device ``""``: the laptop) with the summary.

Drivers (the CLI, later the TUI) pass a progress callback (events below) and two events:
``cancel`` stops new installs (running ones finish: Ctrl-C once), ``abort`` also cancels the
installs in flight (whatever is not committed the device reverts: Ctrl-C twice).

Progress events (dicts, ``event`` says which): ``device_start`` {device, canary}, ``stage``
{device, stage, message, bytes_done?, bytes_total?, ...} (install_release's own events),
``device_done`` {device, result, before, after, message}, ``stopping`` {reason}, ``done``
{result}.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldkit.errors import Cancelled, CheckFailed, ConfigError, FieldkitError

ProgressFn = Callable[[dict], None]
RESULTS = ("committed", "reverted", "refused", "failed", "skipped")


# ---- the release, verified once on the laptop ---------------------------------------------------
def verify_on_laptop(release_dir: Path, keys: Sequence[Any] = (), *, no_smoke: bool = False,
                     cancel: threading.Event | None = None) -> dict:
    """Check the release once before any device is touched: every file against the signed
    statement (none changed, missing or added, no symlinks), release.json valid and covered, a
    smoke set unless ``no_smoke``. With ``keys`` (release public keys) the signature itself is
    verified too; without, the signer is each device's decision (its own anchors, at its install).

    Returns ``{"name", "version", "security_version", "digest", "signer", "files", "bytes"}``;
    raises VerificationFailed (exit 1) or ConfigError (exit 2)."""
    from fieldkit import oms
    from fieldkit.release import RELEASE_JSON, load_manifest, verify_release

    release_dir = Path(release_dir)
    if not release_dir.is_dir():
        raise ConfigError(f"release {release_dir}: no such directory")
    if keys:
        v = verify_release(release_dir, list(keys), cancel=cancel)
        manifest, digest, signer, nfiles, nbytes = v.manifest, v.digest, v.signer, len(v.files), v.total_bytes
    else:
        sig = release_dir / oms.SIGNATURE_NAME
        if not sig.is_file():
            raise oms.VerificationFailed("not_signed", f"{release_dir} has no {oms.SIGNATURE_NAME}: it is not signed",
                                         path=oms.SIGNATURE_NAME,
                                         hint="sign it with `fieldkit release sign DIR --key KEY.pem`")
        st = oms.read_signature(sig).statement
        if oms.subject_digest(r.digest for r in st.resources) != st.subject_digest:
            raise oms.VerificationFailed("bad_signature", f"{sig}: the subject digest does not match the listed "
                                         "files (an inconsistent manifest)", path=oms.SIGNATURE_NAME)
        expected: dict[str, str] = {}
        for r in st.resources:
            why = oms.name_problem(r.name)
            if why is not None or r.name in expected:
                raise oms.VerificationFailed("bad_signature" if why is None else "bad_path",
                                             f"{sig}: the signed file name {r.name[:200]!r} "
                                             f"{why or 'is listed twice'}", path=oms.SIGNATURE_NAME)
            expected[r.name] = r.digest
        # the same ignore rule as the full verification (model_signing's defaults + the statement's)
        actual = oms.scan_directory(release_dir, oms.effective_ignores(oms.SIGNATURE_NAME, st.ignore_paths))
        extra = sorted(set(actual) - set(expected))
        if extra:
            raise oms.VerificationFailed("extra_file", f"{release_dir}: {', '.join(extra[:5])} not covered by the "
                                         "signature", path=extra[0])
        missing = sorted(set(expected) - set(actual))
        if missing:
            raise oms.VerificationFailed("missing_file", f"{release_dir}: {', '.join(missing[:5])} signed but "
                                         "missing", path=missing[0])
        files = oms.hash_files(actual, cancel=cancel)
        for f in files:
            if f.sha256 != expected[f.name]:
                raise oms.VerificationFailed(
                    "tampered", f"{release_dir / f.name} was changed after signing: sha256 {f.sha256}, the "
                    f"signature says {expected[f.name]}", path=f.name, expected=expected[f.name], actual=f.sha256)
        try:
            manifest = load_manifest(release_dir)
        except ConfigError as exc:
            raise oms.VerificationFailed("bad_release", exc.message, path=RELEASE_JSON, hint=exc.hint) from None
        needed = [RELEASE_JSON, manifest.model] + (
            [manifest.smoke.inputs, manifest.smoke.outputs] if manifest.smoke else [])
        for rel in needed:
            if rel not in expected:
                raise oms.VerificationFailed("bad_release", f"{release_dir / rel} is not covered by the signature",
                                             path=rel)
        digest, signer = st.subject_digest, None
        nfiles, nbytes = len(files) + 1, sum(f.size for f in files) + sig.stat().st_size
    if not no_smoke and manifest.smoke is None:
        raise ConfigError(f"{manifest.name} {manifest.version} carries no smoke set, so it cannot be proven on the "
                          "devices", hint="add --no-smoke to accept it untested (journaled as such)")
    return {"name": manifest.name, "version": manifest.version, "security_version": manifest.security_version,
            "digest": digest, "signer": signer, "files": nfiles, "bytes": nbytes}


# ---- plan, outcome, result ------------------------------------------------------------------------
@dataclass
class RolloutPlan:
    """What a rollout will do; made by :func:`plan_rollout` before any device is touched."""

    home: Any
    release_dir: Path
    release: dict  # name, version, security_version, digest, signer (None until a device verified it)
    devices: list[Any]  # ResolvedDevice, in rollout order (the canaries first)
    canary: int
    parallel: int
    downgrade: bool = False
    no_smoke: bool = False
    timeout: float = 15.0
    refusal: FieldkitError | None = None  # the release did not verify on the laptop: nothing will be touched

    @property
    def canaries(self) -> list[Any]:
        return self.devices[:self.canary]

    @property
    def rest(self) -> list[Any]:
        return self.devices[self.canary:]


@dataclass
class DeviceOutcome:
    device: str
    canary: bool
    before: str | None = None
    after: str | None = None
    result: str = "skipped"
    message: str = "not started: the rollout stopped before this device"
    seconds: float | None = None
    started_at: float | None = None  # time.monotonic() when its install started (order checks, the TUI)
    install: Any = field(default=None, repr=False)  # the InstallResult, when an install ran
    error: FieldkitError | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"device": self.device, "before": self.before, "after": self.after, "result": self.result,
                "canary": self.canary, "message": self.message,
                "seconds": None if self.seconds is None else round(self.seconds, 3)}


@dataclass
class RolloutResult:
    release: dict
    devices: list[DeviceOutcome]
    canary: int
    parallel: int
    stopped: str | None = None  # why no new install started (None: every device was started)
    cancelled: bool = False
    refusal: FieldkitError | None = field(default=None, repr=False)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.devices) and all(d.result == "committed" for d in self.devices)

    @property
    def exit_code(self) -> int:
        if self.ok:
            return 0
        return 130 if self.cancelled else 1

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.devices:
            out[d.result] = out.get(d.result, 0) + 1
        return out

    def to_json(self) -> dict:
        return {"release": self.release, "devices": [d.to_json() for d in self.devices], "canary": self.canary,
                "parallel": self.parallel, "stopped": self.stopped,
                "error": None if self.refusal is None else str(self.refusal)}


def plan_rollout(home: Any, specs: Sequence[str], release_dir: Path, *, canary: int = 1, parallel: int = 4,
                 keys: Sequence[Any] = (), downgrade: bool = False, no_smoke: bool = False, timeout: float = 15.0,
                 cancel: threading.Event | None = None) -> RolloutPlan:
    """Resolve the devices (a mistyped name is a ConfigError, exit 2) and verify the release on the
    laptop. A release that does not verify is kept as ``plan.refusal``: running that plan touches no
    device and reports every one ``skipped``."""
    from fieldkit.devices import require_identity, resolve
    from fieldkit.oms import VerificationFailed

    if canary < 0:
        raise ConfigError(f"--canary {canary}: expected 0 or more")
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: expected 1 or more")
    release_dir = Path(release_dir)
    if not release_dir.is_dir():
        raise ConfigError(f"release {release_dir}: no such directory")
    devices, seen = [], set()
    for spec in specs:
        dev = resolve(spec, home)
        if dev.name not in seen:
            seen.add(dev.name)
            devices.append(dev)
    if not devices:
        raise ConfigError("no device given: name devices, or use --all or --group G")
    require_identity(home)
    plan = RolloutPlan(home, release_dir, {"name": None, "version": None, "security_version": None,
                                           "digest": None, "signer": None, "dir": str(release_dir)},
                       devices, min(canary, len(devices)), parallel, downgrade, no_smoke, timeout)
    try:
        info = verify_on_laptop(release_dir, keys, no_smoke=no_smoke, cancel=cancel)
    except (VerificationFailed, CheckFailed) as exc:
        plan.refusal = exc
    else:
        plan.release.update({k: info[k] for k in ("name", "version", "security_version", "digest", "signer")})
    return plan


# ---- running it -----------------------------------------------------------------------------------
class _Runner:
    def __init__(self, plan: RolloutPlan, journal: Any, progress: ProgressFn | None,
                 cancel: threading.Event, abort: threading.Event | None) -> None:
        self.plan = plan
        self.journal = journal
        self.progress = progress
        self.cancel = cancel
        self.abort = abort
        self.stopped: str | None = None
        self._lock = threading.Lock()
        self.outcomes = {d.name: DeviceOutcome(d.name, i < plan.canary) for i, d in enumerate(plan.devices)}

    def emit(self, **data: Any) -> None:
        if self.progress is not None:
            try:
                self.progress(data)
            except Exception:
                pass  # a broken display must not break a rollout

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.stopped is not None:
                return
            self.stopped = reason
        self.emit(event="stopping", reason=reason)

    def install_one(self, dev: Any) -> DeviceOutcome:
        from fieldkit.devices import open_session
        from fieldkit.install import install_release

        out = self.outcomes[dev.name]
        out.started_at = time.monotonic()
        out.result, out.message = "failed", ""
        self.emit(event="device_start", device=dev.name, canary=out.canary)
        try:
            session = open_session(dev, self.plan.home, journal=self.journal, timeout=self.plan.timeout)
            with session:
                res = install_release(
                    session, self.plan.release_dir, downgrade=self.plan.downgrade, no_smoke=self.plan.no_smoke,
                    progress=lambda ev: self.emit(**{**ev, "event": "stage", "device": dev.name}), cancel=self.abort)
            out.install = res
            out.before, out.after, out.result, out.message = res.before, res.after, res.result, res.message
            out.error = res.error
            if res.release.get("signer") and not self.plan.release.get("signer"):
                self.plan.release["signer"] = res.release["signer"]
        except Cancelled as exc:  # abort: the device undoes whatever was not committed
            out.result, out.message, out.error = "failed", f"cancelled: {exc.message}", exc
        except FieldkitError as exc:  # not reached, host key, a broken agent
            out.result, out.error = "failed", exc
            out.message = (f"not reached: {exc.message}" if exc.exit_code == 3 else exc.message)
        except Exception as exc:  # a fault of fieldkit's: this device failed, the rollout stops
            out.result, out.message = "failed", f"internal error: {type(exc).__name__}: {exc}"
        out.seconds = time.monotonic() - out.started_at
        if out.result != "committed":
            self.stop(("the canary " if out.canary else "") + f"{dev.name} {out.result}"
                      + (f": {out.message}" if out.message else ""))
        self.emit(event="device_done", device=dev.name, result=out.result, before=out.before, after=out.after,
                  message=out.message, canary=out.canary)
        return out

    def wave(self, devices: list[Any]) -> None:
        """At most ``parallel`` at once; nothing new after a failure, a cancel or an abort."""
        pending = list(devices)
        running: set[Future] = set()
        with ThreadPoolExecutor(max_workers=max(1, min(self.plan.parallel, len(devices)))) as pool:
            while pending or running:
                while pending and len(running) < self.plan.parallel and self.may_start():
                    running.add(pool.submit(self.install_one, pending.pop(0)))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                running = set(running)
                for f in done:
                    f.result()  # install_one never raises for a device problem

    def may_start(self) -> bool:
        if self.stopped is not None:
            return False
        if self.cancel.is_set() or (self.abort is not None and self.abort.is_set()):
            self.stop("cancelled by the operator: no new install started")
            return False
        return True


def run_rollout(plan: RolloutPlan, *, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                abort: threading.Event | None = None) -> RolloutResult:
    """Run ``plan``: the canaries, then the rest (see the module docstring). Never raises for a
    device problem: every device ends with a result; one ``release.rollout`` journal entry."""
    from fieldkit.journal import LAPTOP, Journal

    cancel = cancel or threading.Event()
    t0 = time.monotonic()
    with Journal.open(plan.home) as journal:
        runner = _Runner(plan, journal, progress, cancel, abort)
        if plan.refusal is not None:
            runner.stopped = f"the release did not verify on the laptop: {plan.refusal.message}"
            for o in runner.outcomes.values():
                o.message = "not started: the release did not verify on the laptop"
        else:
            runner.wave(plan.canaries)  # every canary must commit: any other result stops the rollout
            if plan.rest and runner.may_start():
                runner.wave(plan.rest)
        result = RolloutResult(dict(plan.release), [runner.outcomes[d.name] for d in plan.devices], plan.canary,
                               plan.parallel, runner.stopped,
                               cancelled=cancel.is_set() or (abort is not None and abort.is_set()),
                               refusal=plan.refusal, seconds=time.monotonic() - t0)
        _journal(journal, LAPTOP, plan, result)
    runner.emit(event="done", result=result)
    return result


def decline_rollout(plan: RolloutPlan, reason: str = "not confirmed") -> RolloutResult:
    """The operator said no: nothing was touched; journaled as a cancelled rollout."""
    from fieldkit.journal import LAPTOP, Journal

    outcomes = [DeviceOutcome(d.name, i < plan.canary, message=f"not started: {reason}")
                for i, d in enumerate(plan.devices)]
    result = RolloutResult(dict(plan.release), outcomes, plan.canary, plan.parallel, reason, cancelled=True)
    with Journal.open(plan.home) as journal:
        _journal(journal, LAPTOP, plan, result)
    return result


def _journal(journal: Any, laptop: str, plan: RolloutPlan, result: RolloutResult) -> None:
    outcome = ("ok" if result.ok else "refused" if result.refusal is not None
               else "cancelled" if result.cancelled else "failed")
    journal.record(laptop, "release.rollout", outcome, {
        "release": {k: v for k, v in result.release.items()}, "canary": plan.canary, "parallel": plan.parallel,
        "downgrade": plan.downgrade, "no_smoke": plan.no_smoke, "stopped": result.stopped,
        "error": None if result.refusal is None else str(result.refusal)[:500],
        "seconds": round(result.seconds, 3), "counts": result.counts(),
        "devices": [{"device": d.device, "before": d.before, "after": d.after, "result": d.result,
                     "canary": d.canary} for d in result.devices]})


def rollout(home: Any, specs: Sequence[str], release_dir: Path, *, canary: int = 1, parallel: int = 4,
            keys: Sequence[Any] = (), downgrade: bool = False, no_smoke: bool = False, timeout: float = 15.0,
            confirm: Callable[[RolloutPlan], bool] | None = None, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, abort: threading.Event | None = None) -> RolloutResult:
    """Plan, confirm (once, for the whole rollout) and run: what a driver calls in one go."""
    plan = plan_rollout(home, specs, release_dir, canary=canary, parallel=parallel, keys=keys, downgrade=downgrade,
                        no_smoke=no_smoke, timeout=timeout, cancel=cancel)
    if plan.refusal is None and confirm is not None and not confirm(plan):
        return decline_rollout(plan)
    return run_rollout(plan, progress=progress, cancel=cancel, abort=abort)
