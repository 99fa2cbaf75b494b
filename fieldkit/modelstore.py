"""What is installed on a device and which release keys it trusts, seen from the laptop
(`fieldkit models`, `fieldkit models verify|remove`, `fieldkit anchors list|add|remove`).

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
    """``{"device", "release_keys": [{"fingerprint", "hint", "file"}]}``."""
    res = session.call("anchors_list")
    return {"device": session.name, "dir": res.dir,
            "release_keys": [{"fingerprint": a.fingerprint, "hint": a.hint, "file": a.file} for a in res.keys]}


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
                          hint="give the .pub.pem that `fieldkit release keygen` wrote, not the private key") from None
    return raw.decode("ascii", "replace"), key_fingerprint(key)


def add_anchor(session: Any, pem: str, fingerprint: str) -> dict:
    with session.operation("anchors.add", {"fingerprint": fingerprint}) as op:
        res = session.call("anchors_add", {"pem": pem})
        op.details.update(file=res.file, added=res.added)
    return {"device": session.name, "fingerprint": res.fingerprint, "hint": res.hint, "file": res.file,
            "added": res.added}


def remove_anchor(session: Any, fingerprint: str) -> dict:
    with session.operation("anchors.remove", {"fingerprint": fingerprint}) as op:
        res = session.call("anchors_remove", {"fingerprint": fingerprint})
        op.details.update(removed=res.removed)
    return {"device": session.name, "fingerprint": fingerprint, "removed": res.removed}
