"""The OpenSSF Model Signing format itself: types, the in-toto statement, the DSSE envelope, the bundle.

Building a statement (:func:`statement_bytes`) and a bundle (:func:`bundle_json`), the DSSE PAE the
signature covers (:func:`pae`), and parsing a ``model.sig`` that came from anywhere
(:func:`parse_signature`, :func:`read_signature`: every field is checked, anything wrong is a
:class:`VerificationFailed` naming the file and the field). No key is checked and no directory is
read here; the rules are listed in :mod:`fieldkit.oms`, which signs and verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from fieldkit import signing
from fieldkit.errors import CheckFailed

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PREDICATE_TYPE_V01 = "https://model_signing/Digests/v0.1"
SIGNATURE_NAME = "model.sig"
DEFAULT_IGNORES = (".git", ".gitattributes", ".github", ".gitignore")
MAX_SIGNATURE_BYTES = 64 << 20       # a model.sig is a few KB; 100,000 files make ~20 MB
MAX_RESOURCES = 100_000
MAX_NAME_BYTES = 4096
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

CODES = frozenset({"not_signed", "bad_signature", "untrusted_key", "tampered", "extra_file", "missing_file",
                   "symlink", "bad_path"})


class VerificationFailed(CheckFailed):
    """A directory is not what a trusted key signed (exit code 1).

    ``code`` is one of :data:`CODES` (the device's refusal codes, docs/releases.md) or ``bad_release``;
    ``path`` the file concerned when there is one; ``expected`` / ``actual`` the digests for ``tampered``."""

    def __init__(self, code: str, message: str, *, path: str | None = None, expected: str | None = None,
                 actual: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.path = path
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class FileDigest:
    """One file of a signed directory: path relative to it (``/``-separated), size, sha256 hex."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Resource:
    name: str
    algorithm: str
    digest: str  # lowercase hex


@dataclass(frozen=True)
class Statement:
    """The in-toto statement inside a signature (parsed, not yet authenticated)."""

    subject_name: str
    subject_digest: str  # lowercase hex
    predicate_type: str
    method: str
    hash_type: str
    allow_symlinks: bool
    ignore_paths: tuple[str, ...]
    resources: tuple[Resource, ...]


@dataclass(frozen=True)
class Bundle:
    """A parsed ``model.sig`` (not yet verified)."""

    source: str
    media_type: str
    hint: str | None
    payload_type: str
    payload: bytes
    signature: bytes  # DER, signatures[0]
    statement: Statement


# --- small pieces --------------------------------------------------------------------------------

def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding (lengths in decimal ASCII, in bytes)."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def subject_digest(digests: Iterable[str]) -> str:
    """sha256 over the raw bytes of per-file sha256 hex digests, in the given order."""
    h = hashlib.sha256()
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def resource_sort_key(name: str) -> tuple[str, ...]:
    """The order ``model_signing`` lists resources in: by path components (pathlib order)."""
    return tuple(name.split("/"))


def public_key_hint(public_key: Any) -> str:
    """The bundle's ``publicKey.hint``: hex sha256 of the SubjectPublicKeyInfo PEM bytes."""
    return hashlib.sha256(signing.public_key_pem(public_key).encode()).hexdigest()


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a canonical ``/``-separated path inside a directory, or None when it is."""
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith("/"):
        return "is an absolute path"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return "is too long"
    parts = name.split("/")
    if ".." in parts:
        return "leaves the directory (..)"
    if "" in parts or "." in parts:
        return "is not a canonical relative path (empty or '.' component)"
    return None


# --- writing -------------------------------------------------------------------------------------

def statement_bytes(subject_name: str, files: Sequence[FileDigest], ignore_paths: Sequence[str]) -> bytes:
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": subject_digest(f.sha256 for f in files)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                              "ignore_paths": list(ignore_paths)},
            "resources": [{"name": f.name, "algorithm": "sha256", "digest": f.sha256} for f in files],
        },
    }
    return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")


def bundle_json(payload: bytes, signature_b64: str, hint: str) -> str:
    """The ``model.sig`` text: a sigstore bundle holding the DSSE envelope over ``payload``."""
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": signature_b64, "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":"))


# --- parsing a model.sig ---------------------------------------------------------------------

class _Bad(Exception):
    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}" if where else what)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(obj: dict, key: str, where: str, kind: type | tuple, what: str, *, optional: bool = False) -> Any:
    here = f"{where}.{key}" if where else key
    if key not in obj:
        if optional:
            return None
        raise _Bad(here, f"missing; expected {what}")
    value = obj[key]
    if optional and value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _Bad(here, f"expected {what}, got {_show(value)}")
    return value


def _b64(value: str, where: str, limit: int) -> bytes:
    if len(value) > limit * 4 // 3 + 4:
        raise _Bad(where, "too large")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise _Bad(where, "expected base64 text") from None


def _hex_digest(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _Bad(where, f"expected a sha256 digest (64 hex digits), got {_show(value)}")
    return value.lower()


def _parse_statement(payload: bytes) -> Statement:
    where = "dsseEnvelope.payload"
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Bad(where, f"not an in-toto JSON statement ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise _Bad(where, f"expected a JSON object, got {_show(doc)}")
    _type = _get(doc, "_type", where, str, "a string")
    if _type != STATEMENT_TYPE:
        raise _Bad(f"{where}._type", f"expected {STATEMENT_TYPE}, got {_show(_type)}")
    ptype = _get(doc, "predicateType", where, str, "a string")
    if ptype == PREDICATE_TYPE_V01:
        raise _Bad(f"{where}.predicateType", "the pre-1.0 model_signing format (v0.1) is not accepted; "
                   "re-sign with model_signing >= 1.0 or `fieldkit release sign`")
    if ptype != PREDICATE_TYPE:
        raise _Bad(f"{where}.predicateType", f"expected {PREDICATE_TYPE}, got {_show(ptype)}")
    subjects = _get(doc, "subject", where, list, "a list with one subject")
    if len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise _Bad(f"{where}.subject", f"expected exactly one subject object, got {len(subjects)} entries")
    subj = subjects[0]
    sw = f"{where}.subject[0]"
    subject_name = _get(subj, "name", sw, str, "a string")
    digest_obj = _get(subj, "digest", sw, dict, "an object")
    subject_hex = _hex_digest(digest_obj.get("sha256"), f"{sw}.digest.sha256")
    predicate = _get(doc, "predicate", where, dict, "an object")
    pw = f"{where}.predicate"
    ser = _get(predicate, "serialization", pw, dict, "an object")
    sw = f"{pw}.serialization"
    method = _get(ser, "method", sw, str, "a string")
    if method != "files":
        raise _Bad(f"{sw}.method", f"fieldkit verifies the 'files' serialization only, got {_show(method)} "
                   "(sign without sharding)")
    hash_type = _get(ser, "hash_type", sw, str, "a string")
    if hash_type != "sha256":
        raise _Bad(f"{sw}.hash_type", f"fieldkit verifies sha256 only, got {_show(hash_type)}")
    allow_symlinks = _get(ser, "allow_symlinks", sw, bool, "true or false")
    ignore_raw = _get(ser, "ignore_paths", sw, list, "a list of paths", optional=True) or []
    if len(ignore_raw) > 1000:
        raise _Bad(f"{sw}.ignore_paths", f"too many entries ({len(ignore_raw)})")
    ignore_paths = []
    for i, p in enumerate(ignore_raw):
        if not isinstance(p, str) or len(p) > MAX_NAME_BYTES:
            raise _Bad(f"{sw}.ignore_paths[{i}]", f"expected a path, got {_show(p)}")
        ignore_paths.append(p)
    res_raw = _get(predicate, "resources", pw, list, "a list of files")
    if len(res_raw) > MAX_RESOURCES:
        raise _Bad(f"{pw}.resources", f"too many files ({len(res_raw)}, at most {MAX_RESOURCES})")
    resources = []
    for i, r in enumerate(res_raw):
        rw = f"{pw}.resources[{i}]"
        if not isinstance(r, dict):
            raise _Bad(rw, f"expected an object, got {_show(r)}")
        name = _get(r, "name", rw, str, "a path")
        algorithm = _get(r, "algorithm", rw, str, "a string")
        if algorithm != "sha256":
            raise _Bad(f"{rw}.algorithm", f"expected sha256, got {_show(algorithm)}")
        resources.append(Resource(name, algorithm, _hex_digest(r.get("digest"), f"{rw}.digest")))
    return Statement(subject_name=subject_name, subject_digest=subject_hex, predicate_type=ptype, method=method,
                     hash_type=hash_type, allow_symlinks=allow_symlinks, ignore_paths=tuple(ignore_paths),
                     resources=tuple(resources))


def parse_signature(data: bytes, source: str = SIGNATURE_NAME) -> Bundle:
    """Parse the bytes of a ``model.sig``; VerificationFailed ``bad_signature`` names ``source`` and the field."""
    try:
        if len(data) > MAX_SIGNATURE_BYTES:
            raise _Bad("", f"too large ({len(data)} bytes, at most {MAX_SIGNATURE_BYTES})")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise _Bad("", f"not a JSON signature bundle ({detail})") from None
        if not isinstance(doc, dict):
            raise _Bad("", f"expected a JSON object, got {_show(doc)}")
        media_type = _get(doc, "mediaType", "", str, "a string")
        if media_type != BUNDLE_MEDIA_TYPE:
            raise _Bad("mediaType", f"expected {BUNDLE_MEDIA_TYPE}, got {_show(media_type)}")
        vm = _get(doc, "verificationMaterial", "", dict, "an object")
        pk = _get(vm, "publicKey", "verificationMaterial", dict, "an object", optional=True)
        if pk is None:
            others = ", ".join(sorted(k for k in vm if k != "tlogEntries")) or "nothing"
            raise _Bad("verificationMaterial.publicKey", f"missing (the bundle holds {others}); fieldkit "
                       "accepts key-mode signatures (`model_signing sign key`) only")
        hint = _get(pk, "hint", "verificationMaterial.publicKey", str, "a hex sha256", optional=True)
        if hint is not None:
            hint = _hex_digest(hint, "verificationMaterial.publicKey.hint")
        env = _get(doc, "dsseEnvelope", "", dict, "an object (a DSSE envelope)")
        payload_type = _get(env, "payloadType", "dsseEnvelope", str, "a string")
        payload = _b64(_get(env, "payload", "dsseEnvelope", str, "base64 text"), "dsseEnvelope.payload",
                       MAX_SIGNATURE_BYTES)
        sigs = _get(env, "signatures", "dsseEnvelope", list, "a list of signatures")
        if not sigs:
            raise _Bad("dsseEnvelope.signatures", "empty")
        if not isinstance(sigs[0], dict):
            raise _Bad("dsseEnvelope.signatures[0]", f"expected an object, got {_show(sigs[0])}")
        der = _b64(_get(sigs[0], "sig", "dsseEnvelope.signatures[0]", str, "base64 text"),
                   "dsseEnvelope.signatures[0].sig", 512)
        if not 8 <= len(der) <= 160:
            raise _Bad("dsseEnvelope.signatures[0].sig", f"not an ECDSA signature ({len(der)} bytes)")
        statement = _parse_statement(payload)
    except _Bad as exc:
        raise VerificationFailed("bad_signature", f"{source}: {exc}", path=source) from None
    return Bundle(source=source, media_type=media_type, hint=hint, payload_type=payload_type, payload=payload,
                  signature=der, statement=statement)


def read_signature(path: Path | str) -> Bundle:
    """Read and parse a ``model.sig``: VerificationFailed ``not_signed`` when absent, ``symlink`` when a
    link, ``bad_signature`` (naming the file and the field) when malformed."""
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise VerificationFailed("not_signed", f"{path.parent} is not signed: {path.name} is missing",
                                 path=path.name, hint=f"sign it: `fieldkit release sign {path.parent} --key KEY.pem`") \
            from None
    except OSError as exc:
        raise VerificationFailed("bad_signature", f"{path} cannot be read: {exc.strerror or exc}",
                                 path=path.name) from None
    if stat.S_ISLNK(st.st_mode):
        raise VerificationFailed("symlink", f"{path} is a symbolic link", path=path.name)
    if not stat.S_ISREG(st.st_mode):
        raise VerificationFailed("bad_signature", f"{path} is not a regular file", path=path.name)
    if st.st_size > MAX_SIGNATURE_BYTES:
        raise VerificationFailed("bad_signature", f"{path}: too large ({st.st_size} bytes, at most "
                                 f"{MAX_SIGNATURE_BYTES})", path=path.name)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:
        raise VerificationFailed("bad_signature", f"{path} cannot be read: {exc.strerror or exc}",
                                 path=path.name) from None
    return parse_signature(data, str(path))
