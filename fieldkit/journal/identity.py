"""The operator's identity: a name and an ECDSA P-256 key, made once by `fieldkit init`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fieldkit.errors import ConfigError
from fieldkit.fsutil import atomic_write_json
from fieldkit.journal.records import IdentityMissing, utc_now
from fieldkit.locations import Home
from fieldkit.signing import (
    generate_private_key, key_fingerprint, load_private_key, public_key_pem, sign_digest, write_private_key,
)

@dataclass(frozen=True)
class Identity:
    name: str
    private_key: Any = field(repr=False)
    public_key_pem: str
    fingerprint: str

    def sign(self, digest: bytes) -> str:
        return sign_digest(self.private_key, digest)


def _check_operator_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise ConfigError(f"operator name {name!r} is not usable: 1 to 100 printable characters")
    return name


def init_identity(home: Home, name: str) -> tuple[Identity, str, str | None]:
    """Create the operator key (or rename the operator). Returns ``(identity, status,
    previous name)`` with status ``created``, ``renamed`` or ``unchanged``. An existing key is
    never replaced: the journal is bound to it."""
    name = _check_operator_name(name)
    home.ensure()
    old = _read_operator_file(home).get("operator")
    if home.operator_key.exists():
        ident = _load_key(home, name)
        status = "unchanged" if old == name else "renamed"
    else:
        write_private_key(home.operator_key, generate_private_key())
        ident = _load_key(home, name)
        status = "created"
    if status != "unchanged":
        doc = {"operator": name, "fingerprint": ident.fingerprint, "updated": utc_now()}
        atomic_write_json(home.operator_file, doc)
    return ident, status, old if status == "renamed" else None


def _read_operator_file(home: Home) -> dict:
    try:
        doc = json.loads(home.operator_file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{home.operator_file} is damaged: {exc}",
                          hint="run `fieldkit init --operator NAME` to write it again") from exc
    return doc if isinstance(doc, dict) else {}


def load_identity(home: Home) -> Identity:
    """The operator's identity, or IdentityMissing with how to create it."""
    if not home.operator_key.exists():
        raise IdentityMissing(home)
    name = _read_operator_file(home).get("operator")
    if not isinstance(name, str) or not name:
        raise IdentityMissing(home, f"operator key present but no operator name ({home.operator_file})")
    return _load_key(home, name)


def _load_key(home: Home, name: str) -> Identity:
    key = load_private_key(home.operator_key, what="operator key")
    return Identity(name, key, public_key_pem(key), key_fingerprint(key.public_key()))


