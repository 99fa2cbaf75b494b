"""The site manifest: what each device, group or profile of a site should run, signed with a release key.

A technician writes the source as TOML::

    [[expect]]
    device = "line3-cam"        # exactly one of: device = "...", group = "...", profile = "..."
    model = "defects"
    version = "2.1.0"           # semver
    digest = "sha256:3f1c..."   # optional: the release digest (the model signature's subject)
    min_agent = "0.1.0"         # optional: the oldest agent this entry accepts

``fieldkit manifest create site.toml --key release.pem --out site.manifest.json`` validates it and
signs it (:func:`create_manifest`): the file is a DSSE envelope, as the model signature's is::

    {"payloadType": "application/vnd.fieldkit.site-manifest+json",
     "payload": base64(canonical JSON of {"format": "fieldkit-site-manifest/1", "created", "entries": [...]}),
     "signatures": [{"keyid": "SHA256:<fingerprint of the release key>", "sig": base64 DER ECDSA P-256}]}

signed over the DSSE PAE (:func:`fieldkit.oms.pae`) with :mod:`fieldkit.signing`. A USB stick
therefore cannot quietly change what "expected" means: :func:`verify_manifest` refuses (exit 1) a
manifest whose signature does not hold or whose signer is not one of the given keys, and treats
the file as hostile until the signature is checked (size, types, base64: a clear error, never a
traceback).

For one device, the most specific entry wins per model (:func:`expected_for`): ``device`` over
``group`` over ``profile``; among entries of the same kind (a device in two groups that both name
the model) the first in the manifest wins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from fieldkit import signing
from fieldkit.errors import CheckFailed, ConfigError
from fieldkit.fsutil import atomic_write
from fieldkit.oms import load_public_key_file, pae
from fieldkit.profiles import NAME_PATTERN, read_toml
from fieldkit.release import NAME_RE, parse_version

__all__ = [
    "PAYLOAD_TYPE", "FORMAT", "SELECTORS", "ManifestError", "Expectation", "Manifest", "load_source",
    "create_manifest", "verify_manifest", "expected_for",
]

PAYLOAD_TYPE = "application/vnd.fieldkit.site-manifest+json"
FORMAT = "fieldkit-site-manifest/1"
SELECTORS = ("device", "group", "profile")
"""The kinds of entry, most specific first."""

MAX_SOURCE_BYTES = 1 << 20      # a site of thousands of devices is a few hundred KB of TOML
MAX_MANIFEST_BYTES = 4 << 20    # the signed file: base64 of the canonical JSON, plus the envelope
MAX_ENTRIES = 10_000
MAX_SIGNATURES = 8
_HEX64 = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")


class ManifestError(CheckFailed):
    """A signed manifest that cannot be trusted: malformed, altered, or signed by another key (exit 1)."""


# ---- the entries ---------------------------------------------------------------------------------

class Expectation(BaseModel):
    """One ``[[expect]]`` entry: which devices (one selector), which model, which release."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    device: str | None = None
    """An inventory device name."""
    group: str | None = None
    """An inventory group (``fieldkit devices add NAME TARGET --group G``)."""
    profile: str | None = None
    """A device profile name (``fieldkit profiles``)."""
    model: str
    """The model name (the release's ``name``)."""
    version: str
    """The release version that should be active (semver)."""
    digest: str | None = None
    """Optional release digest, ``sha256:<hex>`` or hex; kept as 64 lowercase hex digits."""
    min_agent: str | None = None
    """Optional: the device's agent must be at least this version (semver)."""

    @field_validator("device", "group", "profile")
    @classmethod
    def _selector(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.fullmatch(value):
            raise ValueError('expected 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit')
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError("expected a model name: 1-64 letters, digits, '.', '_', '+' or '-'")
        return value

    @field_validator("version", "min_agent")
    @classmethod
    def _semver(cls, value: str | None) -> str | None:
        if value is not None:
            parse_version(value)  # ValueError says what was expected
        return value

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        m = _HEX64.fullmatch(value)
        if m is None:
            raise ValueError("expected a sha256 digest: sha256:<64 hex digits> or 64 hex digits")
        return m.group(1).lower()

    @model_validator(mode="after")
    def _one_selector(self) -> "Expectation":
        given = [k for k in SELECTORS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("expected exactly one of device, group or profile"
                             + (f", got {' and '.join(given)}" if given else ", got none"))
        return self

    @property
    def kind(self) -> str:
        """``device``, ``group`` or ``profile``."""
        return next(k for k in SELECTORS if getattr(self, k) is not None)

    @property
    def selector(self) -> str:
        """``device = "line3-cam"`` as a technician wrote it."""
        return f'{self.kind} = "{getattr(self, self.kind)}"'

    def to_json(self) -> dict:
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True)
class Manifest:
    """A verified site manifest."""

    path: Path | None
    format: str
    created: str
    entries: tuple[Expectation, ...]
    signer: str
    """Fingerprint of the key whose signature holds."""
    sha256: str
    """sha256 of the signed payload: names this manifest in the journal and reports."""

    def to_json(self) -> dict:
        return {"path": None if self.path is None else str(self.path), "format": self.format,
                "created": self.created, "signer": self.signer, "sha256": self.sha256, "entries": len(self.entries)}


# ---- errors naming the file, the entry and the key ------------------------------------------------

_TYPE_WORDS = {"string_type": "a string in quotes", "missing": "a value", "extra_forbidden": None}


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _entry_label(index: int, doc: Any) -> str:
    label = f"[[expect]] #{index}"
    if isinstance(doc, dict):
        for k in SELECTORS:
            if isinstance(doc.get(k), str):
                return f'{label} ({k} = "{doc[k][:63]}")'
    return label


def _entry_errors(where: str, exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "missing":
            msg = "missing" + ("; expected a semver string" if key in ("version",) else "")
        elif kind == "extra_forbidden":
            msg = (f"unknown key (= {_shown(err.get('input'))}); expected device, group or profile, model, "
                   "version, digest, min_agent")
        elif kind == "string_type":
            msg = f"expected a string in quotes, got {_shown(err.get('input'))}"
        elif kind == "value_error":
            msg = str((err.get("ctx") or {}).get("error", err["msg"]))
            if key:
                msg += f" (got {_shown(err.get('input'))})" if "got" not in msg else ""
        else:
            msg = f"{err['msg'].lower()}, got {_shown(err.get('input'))}"
        lines.append(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")
    return lines


def _parse_entries(raw: Any, source: str, error: type[Exception]) -> tuple[Expectation, ...]:
    """Validate a list of entry tables; ``error`` (ConfigError or ManifestError) lists every problem."""
    if not isinstance(raw, list):
        raise error(f"{source}: expect: expected [[expect]] entries, got {_shown(raw)}")
    if len(raw) > MAX_ENTRIES:
        raise error(f"{source}: {len(raw)} entries; at most {MAX_ENTRIES}")
    problems: list[str] = []
    entries: list[Expectation] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, doc in enumerate(raw, start=1):
        where = f"{source}: {_entry_label(i, doc)}"
        if not isinstance(doc, dict):
            problems.append(f"{where}: expected a table, got {_shown(doc)}")
            continue
        given = [k for k in SELECTORS if doc.get(k) is not None]
        if len(given) != 1:  # said even when a field is wrong too (pydantic would stop before)
            problems.append(f"{where}: expected exactly one of device, group or profile, got "
                            + (" and ".join(given) if given else "none"))
        try:
            e = Expectation.model_validate(doc)
        except ValidationError as exc:
            problems.extend(line for line in _entry_errors(where, exc) if len(given) == 1 or "exactly one" not in line)
            continue
        if len(given) != 1:
            continue
        k = (e.kind, getattr(e, e.kind), e.model)
        if k in seen:
            problems.append(f"{where}: model: {e.model} is already expected for {e.selector} by [[expect]] "
                            f"#{seen[k]}; keep one entry")
            continue
        seen[k] = i
        entries.append(e)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise error("\n".join(shown))
    return tuple(entries)


# ---- source and signing ---------------------------------------------------------------------------

def load_source(toml_path: Path | str) -> tuple[Expectation, ...]:
    """Read and validate a manifest's TOML source; ConfigError (exit 2) naming the file, the entry
    (its number and selector) and the key for every problem."""
    path = Path(toml_path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size > MAX_SOURCE_BYTES:
        raise ConfigError(f"{path}: {size} bytes; a manifest source is at most {MAX_SOURCE_BYTES}")
    doc = read_toml(path)
    unknown = sorted(set(doc) - {"expect"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} at the top level: expected [[expect]] entries")
    if "expect" not in doc:
        raise ConfigError(f"{path}: no [[expect]] entries", hint="see `fieldkit manifest create --help`")
    return _parse_entries(doc["expect"], str(path), ConfigError)


def create_manifest(toml_path: Path | str, key_path: Path | str, out: Path | str | None = None) -> dict:
    """Validate ``toml_path`` and sign it with the release key at ``key_path``; the DSSE envelope,
    written atomically to ``out`` when given. ConfigError (exit 2) for a bad source or key."""
    entries = load_source(toml_path)
    key = signing.load_private_key(Path(key_path), what="release key")
    payload = signing.canonical({
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entries": [e.to_json() for e in entries],
    })
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": signing.key_fingerprint(key.public_key()),
                        "sig": signing.sign_bytes(key, pae(PAYLOAD_TYPE, payload))}],
    }
    if out is not None:
        atomic_write(Path(out), json.dumps(envelope, indent=2) + "\n")
    return envelope


# ---- verifying --------------------------------------------------------------------------------------

def _public_keys(keys: Iterable[Any]) -> list[Any]:
    out = []
    for k in keys:
        if isinstance(k, (str, Path)):
            out.append(load_public_key_file(k, what="release public key"))
        else:
            out.append(k.public_key() if hasattr(k, "private_bytes") else k)
    if not out:
        raise ConfigError("no public key to check the manifest with", hint="give the release key with --key PUB.pem")
    return out


def _read(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"site manifest {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"site manifest {path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(f"site manifest {path}: not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"site manifest {path}: {st.st_size} bytes; a signed manifest is at most "
                            f"{MAX_MANIFEST_BYTES} (is this the right file?)")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"site manifest {path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"site manifest {path}: larger than {MAX_MANIFEST_BYTES} bytes")
    return data


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{what}: not JSON ({type(exc).__name__})",
                            hint="give the .json file `fieldkit manifest create` wrote, not the TOML source") from None


def _field(doc: dict, key: str, kind: type, what: str, where: str) -> Any:
    if key not in doc:
        raise ManifestError(f"{where}: {key} is missing; expected {what}")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ManifestError(f"{where}: {key}: expected {what}, got {_shown(value)}")
    return value


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise ManifestError(f"{where}: expected base64 text") from None


def verify_manifest(path: Path | str, public_keys: Sequence[Any]) -> Manifest:
    """Read ``path``, check its signature against ``public_keys`` (PEM file paths or key objects) and
    return the verified manifest. ManifestError (exit 1) for a file that is malformed, altered or
    signed by a key not given; ConfigError (exit 2) for a missing file or a bad key file."""
    path = Path(path)
    keys = _public_keys(public_keys)
    src = f"site manifest {path}"
    env = _json(_read(path), src)
    if not isinstance(env, dict):
        raise ManifestError(f"{src}: expected a JSON object (a DSSE envelope), got {_shown(env)}")
    ptype = _field(env, "payloadType", str, "a string", src)
    if ptype != PAYLOAD_TYPE:
        raise ManifestError(f"{src}: payloadType is {_shown(ptype)}, expected {PAYLOAD_TYPE} (not a site manifest)")
    payload = _b64(_field(env, "payload", str, "base64 text", src), f"{src}: payload")
    sigs = _field(env, "signatures", list, "a list of signatures", src)
    if not sigs:
        raise ManifestError(f"{src}: not signed (no signatures)",
                            hint="sign it: `fieldkit manifest create FILE.toml --key KEY.pem --out FILE.json`")
    if len(sigs) > MAX_SIGNATURES:
        raise ManifestError(f"{src}: {len(sigs)} signatures; at most {MAX_SIGNATURES}")
    by_fp = {signing.key_fingerprint(k): k for k in keys}
    digest = hashlib.sha256(pae(PAYLOAD_TYPE, payload)).digest()
    signer = None
    named: list[str] = []
    for i, s in enumerate(sigs):
        where = f"{src}: signatures[{i}]"
        if not isinstance(s, dict):
            raise ManifestError(f"{where}: expected an object, got {_shown(s)}")
        sig = _field(s, "sig", str, "base64 text", where)
        if len(sig) > 1024:
            raise ManifestError(f"{where}: sig: too long for an ECDSA P-256 signature")
        keyid = s.get("keyid")
        if keyid is not None and not isinstance(keyid, str):
            raise ManifestError(f"{where}: keyid: expected a string, got {_shown(keyid)}")
        candidates = [(keyid, by_fp[keyid])] if keyid in by_fp else ([] if keyid else list(by_fp.items()))
        if keyid and keyid not in by_fp:
            named.append(keyid[:60])
        for fp, k in candidates:
            if signing.verify_digest(k, digest, sig):
                signer = fp
                break
        if signer is None and keyid in by_fp:
            raise ManifestError(f"{src}: the signature by {keyid} does not verify: the manifest was altered "
                                "after signing (or its signature was damaged)",
                                hint="get the manifest from whoever signed it again")
        if signer is not None:
            break
    if signer is None:
        given = ", ".join(by_fp)
        if named:
            raise ManifestError(f"{src} is signed by {', '.join(named)}, which is not the key given ({given})",
                                hint="check the manifest with the release key of this site (--key PUB.pem)")
        raise ManifestError(f"{src}: the signature does not verify with {given}")

    # authenticated from here on; still checked, a signer can make mistakes too
    doc = _json(payload, f"{src}: payload")
    if not isinstance(doc, dict):
        raise ManifestError(f"{src}: payload: expected an object, got {_shown(doc)}")
    fmt = _field(doc, "format", str, "a string", f"{src}: payload")
    if fmt != FORMAT:
        raise ManifestError(f"{src}: format {_shown(fmt)}; this fieldkit reads {FORMAT}",
                            hint="a newer fieldkit may have written it")
    created = _field(doc, "created", str, "a string", f"{src}: payload")[:64]
    entries = _parse_entries(doc.get("entries"), f"{src}: payload", ManifestError)
    return Manifest(path=path, format=fmt, created=created, entries=entries, signer=signer,
                    sha256=hashlib.sha256(payload).hexdigest())


# ---- what one device should run ----------------------------------------------------------------------

def expected_for(manifest: Manifest, device_name: str, groups: Iterable[str] = (),
                 profile: str | None = None) -> list[Expectation]:
    """The entries that apply to one device, one per model: ``device`` over ``group`` over
    ``profile``; among equally specific entries the first in the manifest. Sorted by model."""
    groups = set(groups)
    rank = {"device": 3, "group": 2, "profile": 1}
    best: dict[str, Expectation] = {}
    for e in manifest.entries:
        if not ((e.device is not None and e.device == device_name) or (e.group is not None and e.group in groups)
                or (e.profile is not None and e.profile == profile)):
            continue
        have = best.get(e.model)
        if have is None or rank[e.kind] > rank[have.kind]:
            best[e.model] = e
    return [best[m] for m in sorted(best)]
