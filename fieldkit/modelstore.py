"""What is installed on a device, which release keys it trusts and which operator keys may change it
over serial, seen from the laptop (`fieldkit models`, `fieldkit models verify|remove`,
`fieldkit anchors list|add|remove [--operator]`).

Each call takes an open :class:`~fieldkit.devices.DeviceSession`; changes are journaled on the
laptop here and on the device by the agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fieldkit.errors import ConfigError, DeviceError


def list_models(session: Any) -> dict:
    """``{"device", "models": [{"name", "active", "previous", "installed", "floor", "state", "signer",
    "digest", "installed_at", "installed_by"}]}`` (versions as strings, None when there is none)."""
    from fieldkit.install import recover

    recover(session)
    listed = session.call("models_list", {"digest": True})
    keys = ("name", "active", "previous", "installed", "floor", "state", "signer", "digest", "installed_at",
            "installed_by")
    return {"device": session.name,
            "models": [{k: getattr(m, k) for k in keys} for m in sorted(listed.models, key=lambda m: m.name)]}


def verify_models(session: Any, name: str | None = None) -> dict:
    """Re-hash the installed files on the device against their signatures.
    ``{"device", "ok", "models": [{"name", "version", "ok", "problems"}]}``."""
    with session.operation("models.verify", {"model": name}) as op:
        res = session.call("models_verify", {"name": name}, timeout=1800)
        checks = [c.model_dump() for c in res.models]
        ok = all(c["ok"] for c in checks)
        op.details.update(ok=ok, problems=[f"{c['name']} {c['version']}: {p}" for c in checks for p in c["problems"]])
        if not ok:
            op.outcome = "failed"
    if name is not None and not checks:
        raise DeviceError(f"no model {name} is installed on {session.name}", code="not_installed")
    return {"device": session.name, "ok": ok, "models": checks}


def remove_model(session: Any, name: str, version: str) -> dict:
    """Remove an installed version that is not active (the device refuses the active one)."""
    with session.operation("models.remove", {"model": name, "version": version}):
        res = session.call("model_remove", {"name": name, "version": version}, timeout=300)
    return {"device": session.name, "name": name, "removed": res.removed}


def list_anchors(session: Any) -> dict:
    """``{"device", "release_keys": [{"fingerprint", "hint", "file"}], "operator_keys": [...]}`` (operator
    keys: allowed to change the device over serial; empty from an agent that does not know them)."""
    res = session.call("anchors_list")

    def entries(keys: Any) -> list[dict]:
        return [{"fingerprint": a.fingerprint, "hint": a.hint, "file": a.file} for a in keys]

    return {"device": session.name, "dir": res.dir, "release_keys": entries(res.keys),
            "operators_dir": res.operators_dir, "operator_keys": entries(res.operator_keys)}


def read_public_key(path: Path) -> tuple[str, str]:
    """``(pem_text, fingerprint)`` of an ECDSA P-256 public key file (ConfigError otherwise)."""
    from fieldkit.signing import key_fingerprint, load_public_key

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > 16384:
        raise ConfigError(f"{path} is {len(raw)} bytes: not a public key file")
    try:
        key = load_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an ECDSA P-256 public key ({exc})",
                          hint="give a public key: the .pub.pem that `fieldkit release keygen` wrote, or for an "
                               "operator `fieldkit init --show-public-key > operator.pub.pem`") from None
    return raw.decode("ascii", "replace"), key_fingerprint(key)


def _kind_args(kind: str) -> dict:
    if kind not in ("release", "operator"):
        raise ValueError(f"key kind {kind!r}: release or operator")
    return {"kind": "operator"} if kind == "operator" else {}  # an older agent knows release keys only


def _refuse_old_agent(session: Any, kind: str) -> None:
    if kind == "operator" and not session.supports("auth_challenge"):
        raise DeviceError(f"the agent on {session.name} (version {session.hello.agent_version}) does not know "
                          f"operator keys", code="unsupported",
                          hint="update the agent on the device (fieldkit agent bundle, install.sh)")


def add_anchor(session: Any, pem: str, fingerprint: str, kind: str = "release") -> dict:
    """Trust a release key (``kind="release"``) or allow an operator key to change the device over
    serial (``kind="operator"``, ``etc/fieldkit/operators``)."""
    args = _kind_args(kind)
    _refuse_old_agent(session, kind)
    action = "operators.add" if kind == "operator" else "anchors.add"
    with session.operation(action, {"fingerprint": fingerprint, "kind": kind}) as op:
        res = session.call("anchors_add", {"pem": pem, **args})
        op.details.update(file=res.file, added=res.added)
    return {"device": session.name, "kind": kind, "fingerprint": res.fingerprint, "hint": res.hint,
            "file": res.file, "added": res.added}


def remove_anchor(session: Any, fingerprint: str, kind: str = "release") -> dict:
    args = _kind_args(kind)
    _refuse_old_agent(session, kind)
    action = "operators.remove" if kind == "operator" else "anchors.remove"
    with session.operation(action, {"fingerprint": fingerprint, "kind": kind}) as op:
        res = session.call("anchors_remove", {"fingerprint": fingerprint, **args})
        op.details.update(removed=res.removed)
    return {"device": session.name, "kind": kind, "fingerprint": fingerprint, "removed": res.removed}
