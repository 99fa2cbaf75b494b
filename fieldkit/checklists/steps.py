"""What each step kind does on the device: the checks, the actions and the readings of a checklist.

Every function takes a :class:`StepContext` (the open session, the run's inputs, progress and
cancel) and returns a :class:`Outcome`. Device work goes through the same services the CLI uses
(health, versions, modelstore, install, bench), so it is journaled by them through the session as
well as by the checklist runner (``checklist.step``).

Actions re-check the device before they change anything (:func:`action_state`): an install whose
release is already active and committed, or a rollback whose target is already active and committed,
is "done" without being applied again. That is what makes ``checklist resume`` safe after a pulled
cable or a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldkit.checklists.model import Step
from fieldkit.errors import ConfigError, DeviceError, FieldkitError, HostKeyError

ProgressFn = Callable[[dict], None]

_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64", "armhf": "armv7l"}


@dataclass
class RunInputs:
    """What a run was given (``checklist run ... --release --model --manifest --key``)."""

    release: str | None = None
    model: str | None = None
    manifest: str | None = None
    keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"release": self.release, "model": self.model, "manifest": self.manifest, "keys": list(self.keys)}

    @classmethod
    def from_json(cls, doc: Any) -> RunInputs:
        doc = doc if isinstance(doc, dict) else {}
        keys = doc.get("keys") if isinstance(doc.get("keys"), list) else []
        return cls(*(doc.get(k) if isinstance(doc.get(k), str) else None for k in ("release", "model", "manifest")),
                   keys=[k for k in keys if isinstance(k, str)])


@dataclass
class Outcome:
    """A step's result: ``passed`` or ``failed``, why, and what it read (kept in the record)."""

    status: str
    message: str
    readings: dict = field(default_factory=dict)
    answer: bool | None = None
    note: str = ""


@dataclass
class StepContext:
    session: Any
    home: Any
    inputs: RunInputs
    manifest: Any = None  # the verified fieldkit.manifest.Manifest, when the run has one
    progress: ProgressFn | None = None
    cancel: threading.Event | None = None
    plan: dict | None = None  # an action's plan recorded before an interruption (resume)
    record_plan: Callable[[dict], None] | None = None

    def emit(self, step: Step, data: dict) -> None:
        if self.progress is not None:
            try:
                self.progress({"event": "progress", "step": step.id, **data})
            except Exception:
                pass  # a broken display must not break a run

    @property
    def model_name(self) -> str | None:
        if self.inputs.model:
            return self.inputs.model
        if self.inputs.release:
            from fieldkit.release import load_manifest

            return load_manifest(self.inputs.release).name
        return None


def _ok(ok: bool) -> str:
    return "passed" if ok else "failed"


# ---- readings ----------------------------------------------------------------------------------------
def read_health(ctx: StepContext) -> Any:
    from fieldkit.health import measure, record_health, report_from

    raw, offset = measure(ctx.session, cancel=ctx.cancel)
    report = report_from(ctx.session.name, ctx.session.target, ctx.session.profile, raw, offset)
    record_health(ctx.session, report)
    return report


def read_identity(ctx: StepContext, health: Any = None) -> dict:
    """What the device says it is. Hardware identity (serial numbers, board ids) is another issue:
    until then the health result's hostname, OS, kernel and machine stand for it."""
    s = ctx.session
    raw = (health or read_health(ctx)).raw
    doc = {"device": s.name, "target": s.target, "transport": s.transport, "profile": s.profile.name,
           "profile_arch": s.profile.arch, "agent_version": s.hello.agent_version,
           **{k: raw.get(k) for k in ("hostname", "os", "kernel", "machine")}, "host_key": None}
    if s.transport == "ssh":
        doc["host_key"] = _host_key(ctx)[1]
    return doc


def _host_key(ctx: StepContext) -> tuple[str, str | None]:
    """``(status, fingerprint)``: pinned / not ssh / unknown-or-changed (message)."""
    from fieldkit.devices import check_host_key

    try:
        found = check_host_key(ctx.home, ctx.session.name)
    except HostKeyError as exc:
        return "failed", exc.fingerprint
    return ("n/a", None) if found is None else ("passed", found[1])


def read_models(ctx: StepContext) -> list[dict]:
    from fieldkit.modelstore import list_models

    return list_models(ctx.session)["models"]


def read_versions(ctx: StepContext) -> dict:
    """Installed models, and with the run's manifest each one's status against it (``versions.check``
    in the journal, as `fieldkit versions` records it)."""
    from fieldkit.inventory import get_device
    from fieldkit.manifest import expected_for
    from fieldkit.modelstore import verify_models
    from fieldkit.versions import compare, worst_status

    s = ctx.session
    listed = read_models(ctx)
    if ctx.manifest is None:
        return {"manifest": None, "status": None, "models": listed}
    entry = get_device(ctx.home, s.name)
    expectations = expected_for(ctx.manifest, s.name, entry.groups if entry else (), s.profile.name)
    with s.operation("versions.check", {"manifest": ctx.manifest.sha256}) as op:
        checks = verify_models(s)["models"] if listed else None
        models = compare(expectations, listed, checks, s.hello.agent_version)
        status = worst_status(m.status for m in models)
        op.details.update(status=status, manifest_signer=ctx.manifest.signer,
                          models=[{"name": m.name, "expected": m.expected, "active": m.active, "status": m.status}
                                  for m in models])
        if status != "ok":
            op.outcome = "failed"
    digests = {m["name"]: m.get("digest") for m in listed}
    return {"manifest": {"path": str(ctx.manifest.path), "sha256": ctx.manifest.sha256,
                         "signer": ctx.manifest.signer},
            "status": status, "models": [dict(m.to_json(), active_digest=m.active_digest or digests.get(m.name))
                                         for m in models]}


def read_anchors(ctx: StepContext) -> dict:
    from fieldkit.modelstore import list_anchors

    return list_anchors(ctx.session)


def _key_fingerprints(ctx: StepContext) -> list[tuple[str, str, str]]:
    from fieldkit.modelstore import read_public_key

    return [(path, *read_public_key(Path(path))) for path in ctx.inputs.keys]


# ---- checks -------------------------------------------------------------------------------------------
def check_health(ctx: StepContext, step: Step) -> Outcome:
    report = read_health(ctx)
    checks = report.checks
    if step.checks:
        names = {c.name for c in checks}
        unknown = [n for n in step.checks if n not in names and not any(x.startswith(n + ":") for x in names)]
        if unknown:
            return Outcome("failed", f"the device reported no health check {', '.join(unknown)} "
                           f"(it has: {', '.join(sorted(names))})", {"health": report.to_json()})
        checks = [c for c in checks if c.name in step.checks or c.name.split(":", 1)[0] in step.checks]
    bad = [c for c in checks if c.status not in ("ok", "n/a")]
    what = "all health checks" if not step.checks else "health checks " + ", ".join(step.checks)
    msg = f"{what} ok ({len(checks)} checked)" if not bad else "; ".join(f"{c.name} {c.status}: {c.message}"
                                                                          for c in bad)
    return Outcome(_ok(not bad), msg, {"health": report.to_json()})


def check_versions(ctx: StepContext, step: Step) -> Outcome:
    doc = read_versions(ctx)
    bad = [m for m in doc["models"] if m["status"] != "ok"]
    if not doc["models"]:
        return Outcome("passed", "the manifest expects no model on this device and none is installed",
                       {"versions": doc})
    msg = ("every model as the manifest expects: " + ", ".join(f"{m['name']} {m['active']}" for m in doc["models"])
           if not bad else "; ".join(f"{m['name']} {m['status']}: {m['message']}" for m in bad))
    return Outcome(_ok(not bad), msg, {"versions": doc})


def check_models_verify(ctx: StepContext, step: Step) -> Outcome:
    from fieldkit.modelstore import verify_models

    doc = verify_models(ctx.session)
    bad = [f"{m['name']} {m['version']}: {'; '.join(m['problems'])}" for m in doc["models"] if not m["ok"]]
    msg = f"{len(doc['models'])} installed version(s) match their signatures" if not bad else "; ".join(bad)
    return Outcome(_ok(not bad), msg, {"models_verify": doc})


def check_bench(ctx: StepContext, step: Step) -> Outcome:
    from fieldkit.bench import BenchSettings, parse_model_spec, run_bench
    from fieldkit.benchreport import save_report

    if ctx.inputs.release:
        spec = parse_model_spec(ctx.inputs.release)
    elif ctx.inputs.model:
        spec = parse_model_spec(f"installed:{ctx.inputs.model}")
    else:
        raise ConfigError(f"step {step.id}: a bench needs the run's --release or --model")
    settings = BenchSettings(runs=step.runs) if step.runs else BenchSettings()
    use_case = step.use_case
    if use_case is None and step.budget_ms is None:
        cases = ctx.session.profile.use_cases
        if not cases:
            raise ConfigError(f"profile {ctx.session.profile.name} has no use case, so there is no budget to bench "
                              f"against; name budget_ms in step {step.id}")
        use_case = min(cases, key=lambda n: (cases[n].budget_ms, n))  # the strictest budget
    report = run_bench(ctx.session, spec, settings, use_case=use_case, budget_ms=step.budget_ms,
                       progress=lambda d: ctx.emit(step, d), cancel=ctx.cancel, home=ctx.home)
    try:
        save_report(ctx.home, report)
    except (OSError, FieldkitError):
        pass  # the figures are in the record either way
    lat = report.result.get("latency_ms") or {}
    summary = {"report_id": report.id, "model": spec.label, "use_case": report.use_case,
               "budget_ms": report.budget_ms, "metric": report.metric, "runs": report.result.get("runs"),
               "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
               "verdict": report.verdict.status, "reasons": report.verdict.reasons}
    msg = (f"verdict {report.verdict.status}: {report.metric} {lat.get(report.metric)} ms"
           + (f" against a {report.budget_ms:g} ms budget" if report.budget_ms else ""))
    if report.verdict.reasons:
        msg += "; " + "; ".join(report.verdict.reasons[:3])
    return Outcome(_ok(report.verdict.status != "fail"), msg, {"bench": summary})


def check_smoke(ctx: StepContext, step: Step) -> Outcome:
    name = ctx.model_name
    if not name:
        raise ConfigError(f"step {step.id}: a smoke test needs the run's --model or --release")
    s = ctx.session
    with s.operation("model.smoke", {"model": name, "reason": "checklist"}) as op:
        res = s.call("model_smoke", {"name": name}, timeout=900, cancel=ctx.cancel)
        op.details.update(passed=res.passed, message=res.message, version=getattr(res, "version", None))
        if not res.passed:
            op.outcome = "failed"
    doc = res.model_dump()
    version = doc.get("version")
    return Outcome(_ok(res.passed), f"{name} {version or ''}: {res.message}".replace("  ", " "), {"smoke": doc})


def check_identity(ctx: StepContext, step: Step) -> Outcome:
    ident = read_identity(ctx)
    arch = ctx.session.profile.arch
    machine = str(ident.get("machine") or "")
    norm = _ARCH_ALIASES.get(machine.lower(), machine.lower())
    want = _ARCH_ALIASES.get(arch.lower(), arch.lower())
    ok = want == "any" or norm == want
    msg = (f"{ident.get('hostname')}: {ident.get('os')} on {machine or 'an unknown machine'}; profile "
           f"{ctx.session.profile.name} expects {arch}" + ("" if ok else ": this is not the hardware the profile "
                                                           "describes; check the inventory's profile"))
    return Outcome(_ok(ok), msg, {"identity": ident})


def check_host_key(ctx: StepContext, step: Step) -> Outcome:
    status, fp = _host_key(ctx)
    if status == "n/a":
        return Outcome("passed", f"{ctx.session.name} is reached over {ctx.session.transport}: no SSH host key to pin",
                       {"host_key": None})
    if status == "failed":
        return Outcome("failed", f"the host key of {ctx.session.name} is not pinned or changed (it presents {fp}); "
                       f"`fieldkit trust {ctx.session.name}`", {"host_key": fp})
    return Outcome("passed", f"host key pinned: {fp}", {"host_key": fp})


def check_anchors(ctx: StepContext, step: Step) -> Outcome:
    doc = read_anchors(ctx)
    have = {k["fingerprint"] for k in doc["release_keys"]}
    wanted = _key_fingerprints(ctx)
    if wanted:
        missing = [f"{fp} ({path})" for path, _, fp in wanted if fp not in have]
        ok = not missing
        msg = (f"the device trusts the release key(s) {', '.join(fp for _, _, fp in wanted)}" if ok else
               f"the device does not trust {', '.join(missing)}: `fieldkit anchors add {ctx.session.name} KEY`")
    else:
        ok = bool(have)
        msg = f"the device trusts {len(have)} release key(s)" if ok else "the device trusts no release key"
    return Outcome(_ok(ok), msg, {"anchors": doc})


# ---- actions ------------------------------------------------------------------------------------------
def _entry(ctx: StepContext, name: str) -> dict | None:
    return next((m for m in read_models(ctx) if m["name"] == name), None)


def action_install(ctx: StepContext, step: Step) -> Outcome:
    from fieldkit.install import install_release
    from fieldkit.release import load_manifest

    if not ctx.inputs.release:
        raise ConfigError(f"step {step.id}: an install needs the run's --release DIR")
    rel = load_manifest(ctx.inputs.release)
    entry = _entry(ctx, rel.name)
    if entry and entry["active"] == rel.version and entry["state"] == "committed":
        return Outcome("passed", f"{rel.name} {rel.version} is already active and committed on {ctx.session.name}: "
                       "not installed again", {"install": {"release": {"name": rel.name, "version": rel.version,
                                                                       "digest": entry.get("digest")},
                                                           "result": "already_active", "after": rel.version}})
    if ctx.record_plan is not None:
        ctx.record_plan({"model": rel.name, "version": rel.version, "before": entry["active"] if entry else None})
    res = install_release(ctx.session, Path(ctx.inputs.release), progress=lambda d: ctx.emit(step, d),
                          cancel=ctx.cancel)
    if res.error is not None and isinstance(res.error, FieldkitError) and res.error.exit_code == 3:
        raise res.error  # the link went: the run is interrupted, not failed
    return Outcome(_ok(res.result == "committed"), res.message, {"install": res.to_json()})


def action_rollback(ctx: StepContext, step: Step) -> Outcome:
    from fieldkit.install import rollback_model

    name = ctx.model_name
    if not name:
        raise ConfigError(f"step {step.id}: a rollback needs the run's --model NAME")
    entry = _entry(ctx, name)
    if entry is None:
        raise DeviceError(f"no model {name} is installed on {ctx.session.name}", code="not_installed")
    plan = ctx.plan
    if plan and plan.get("target"):
        target = plan["target"]
        if entry["active"] == target and entry["state"] == "committed":
            return Outcome("passed", f"{name} {target} is already active and committed on {ctx.session.name}: the "
                           "rollback was applied before the interruption; not applied again",
                           {"rollback": {"result": "already_active", "before": plan.get("before"), "after": target}})
    else:
        target = entry["previous"]
        if not target:
            raise DeviceError(f"{name} on {ctx.session.name} has no previous version to roll back to", code="not_installed")
        if ctx.record_plan is not None:
            ctx.record_plan({"model": name, "before": entry["active"], "target": target})
    res = rollback_model(ctx.session, name, to=target, progress=lambda d: ctx.emit(step, d), cancel=ctx.cancel)
    if res.error is not None and isinstance(res.error, FieldkitError) and res.error.exit_code == 3:
        raise res.error
    return Outcome(_ok(res.result == "committed"), res.message, {"rollback": res.to_json()})


def action_add_anchor(ctx: StepContext, step: Step) -> Outcome:
    from fieldkit.modelstore import add_anchor

    keys = _key_fingerprints(ctx)
    if not keys:
        raise ConfigError(f"step {step.id}: adding a release key needs the run's --key PUB.pem")
    have = {k["fingerprint"] for k in read_anchors(ctx)["release_keys"]}
    done = []
    for _, pem, fp in keys:
        if fp in have:
            done.append(f"{fp} already trusted")
        else:
            add_anchor(ctx.session, pem, fp)
            done.append(f"{fp} added")
    return Outcome("passed", "; ".join(done), {"anchors": read_anchors(ctx)})


def action_restart_service(ctx: StepContext, step: Step) -> Outcome:
    service = ctx.session.profile.service
    if service is None:
        return Outcome("failed", f"the {ctx.session.profile.name} profile names no inference service to restart")
    with ctx.session.operation("service.restart", {"service": service.unit}) as op:
        res = ctx.session.call("service_restart", {"service": service.unit}, timeout=120, cancel=ctx.cancel)
        op.details.update(restarted=res.restarted)
    msg = (f"{service.unit} restarted" if res.restarted else
           f"{service.unit}: no systemd on the device to restart it with")
    return Outcome(_ok(res.restarted), msg, {"service": res.model_dump()})


# ---- records ------------------------------------------------------------------------------------------
def record_readings(ctx: StepContext, step: Step) -> Outcome:
    readings: dict[str, Any] = {}
    health = None
    for what in step.record or []:
        if what == "health":
            health = read_health(ctx)
            readings["health"] = health.to_json()
        elif what == "identity":
            readings["identity"] = read_identity(ctx, health)
        elif what == "versions":
            readings["versions"] = read_versions(ctx)
        elif what == "models":
            readings["models"] = read_models(ctx)
        elif what == "anchors":
            readings["anchors"] = read_anchors(ctx)
    return Outcome("passed", "recorded " + ", ".join(step.record or []), readings)


CHECK_FNS: dict[str, Callable[[StepContext, Step], Outcome]] = {
    "health": check_health, "versions": check_versions, "models_verify": check_models_verify, "bench": check_bench,
    "smoke": check_smoke, "identity": check_identity, "host_key": check_host_key, "anchors": check_anchors,
}
ACTION_FNS: dict[str, Callable[[StepContext, Step], Outcome]] = {
    "install": action_install, "rollback": action_rollback, "add_anchor": action_add_anchor,
    "restart_service": action_restart_service,
}
