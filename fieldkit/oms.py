"""OpenSSF Model Signing (the ``model_signing`` 1.1.1 format), key mode, ECDSA P-256.

``sign_directory`` writes ``DIR/model.sig`` over every other file of a directory; ``verify_directory``
checks one against a list of trusted public keys; ``read_signature`` parses a ``model.sig`` (a file
that came on a USB stick: every field is checked, and anything wrong is a :class:`VerificationFailed`
naming the file and the field, never a traceback). ``model_signing sign key`` / ``verify key`` and
these functions accept each other's files. Keys, signatures and fingerprints come from
:mod:`fieldkit.signing`; the ``model_signing`` package is a test dependency only.

The rules, as ``model_signing`` 1.1.1 implements them (``_serialization/file.py``, ``hashing.py``,
``manifest.py``, ``_signing/signing.py``, ``_signing/sign_ec_key.py``, ``_signing/sign_sigstore_pb.py``):

* Files: every regular file under DIR, recursively (dot files included). A symlink anywhere, even
  inside an ignored directory, is refused (``allow_symlinks`` false); so is anything that is neither
  a file nor a directory. Directories themselves are not listed (an empty directory is invisible).
* Ignored: ``.git``, ``.gitattributes``, ``.github``, ``.gitignore`` (at the top of DIR only) and the
  signature file, plus the signature's own ``serialization.ignore_paths`` when verifying. A path is
  ignored when it equals an ignore path or lies under it (``model.sig`` ignores ``model.sig/x`` too).
  The signed ``ignore_paths`` lists the git paths and the signature name, relative to DIR.
* Names: the path relative to DIR, ``/``-separated. Resources are sorted by the tuple of path
  components (pathlib order), not by the string: ``a/b`` sorts before ``a-b`` and ``a.txt``.
* Per file: ``sha256`` of the content, lowercase hex (``resources[i] = {name, algorithm: "sha256",
  digest}``).
* The subject (the release digest): ``sha256(d_1 || d_2 || ... || d_n)`` over the raw 32-byte file
  digests in the order of ``resources``; ``subject = [{"name": DIR's base name, "digest": {"sha256": hex}}]``.
  A verifier recomputes it in the listed order and refuses a mismatch.
* Statement: in-toto v1 (``_type`` ``https://in-toto.io/Statement/v1``, ``predicateType``
  ``https://model_signing/signature/v1.0``, ``predicate = {"serialization": {"method": "files",
  "hash_type": "sha256", "allow_symlinks": false, "ignore_paths": [...]}, "resources": [...]}``).
* Envelope: DSSE, ``payloadType`` ``application/vnd.in-toto+json``, ``payload`` = base64 of the statement's
  JSON bytes; ``signatures = [{"sig": base64 DER ECDSA, "keyid": ""}]``, verified over
  ``PAE = b"DSSEv1 <len(type)> <type> <len(payload)> <payload>"`` with ECDSA P-256 / SHA-256.
  Only ``signatures[0]`` counts.
* Bundle: ``{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial":
  {"publicKey": {"hint": hex sha256 of the signer's SubjectPublicKeyInfo PEM bytes}, "tlogEntries": []},
  "dsseEnvelope": {...}}``. A hint that is present must match the verifying key; without one any key is tried.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from fieldkit import signing
from fieldkit.errors import Cancelled, CheckFailed, ConfigError
from fieldkit.fsutil import atomic_write

__all__ = [
    "BUNDLE_MEDIA_TYPE", "PAYLOAD_TYPE", "STATEMENT_TYPE", "PREDICATE_TYPE", "DEFAULT_IGNORES",
    "SIGNATURE_NAME", "CODES", "VerificationFailed", "FileDigest", "Resource", "Statement", "Bundle",
    "Signed", "Verified", "pae", "subject_digest", "resource_sort_key", "public_key_hint",
    "load_public_key_file", "hash_file", "scan_directory", "hash_files", "sign_directory",
    "parse_signature", "read_signature", "verify_directory", "name_problem",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PREDICATE_TYPE_V01 = "https://model_signing/Digests/v0.1"
SIGNATURE_NAME = "model.sig"
DEFAULT_IGNORES = (".git", ".gitattributes", ".github", ".gitignore")

CHUNK = 1 << 20                      # read size when hashing
MAX_SIGNATURE_BYTES = 64 << 20       # a model.sig is a few KB; 100,000 files make ~20 MB
MAX_RESOURCES = 100_000
MAX_NAME_BYTES = 4096
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

CODES = frozenset({"not_signed", "bad_signature", "untrusted_key", "tampered", "extra_file", "missing_file",
                   "symlink", "bad_path"})

Progress = Callable[[int, int], None]  # (bytes hashed so far, total bytes)


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


@dataclass(frozen=True)
class Signed:
    """What ``sign_directory`` wrote."""

    directory: Path
    signature: Path
    digest: str
    signer: str  # fingerprint, SHA256:...
    hint: str
    files: tuple[FileDigest, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Verified:
    """A directory that verified: the release digest, who signed it and every covered file."""

    directory: Path
    signature: Path
    digest: str
    subject_name: str
    signer: str  # fingerprint of the key that verified
    hint: str  # hex sha256 of that key's PEM
    key_source: str | None  # the file the key came from, when it was given as a path
    files: tuple[FileDigest, ...]
    ignore_paths: tuple[str, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


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


def load_public_key_file(path: Path | str, *, what: str = "public key") -> Any:
    """An ECDSA P-256 public key from a PEM file; ConfigError (exit 2) names the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return signing.load_public_key(raw)
    except (ValueError, TypeError) as exc:
        hint = None
        if b"PRIVATE KEY" in raw:
            hint = "that is a private key; give the public key (.pub.pem) beside it"
        raise ConfigError(f"{what} {path} is not an ECDSA P-256 public key PEM ({exc})", hint=hint) from None


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled")


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


def _normalise_ignore(path: str) -> str | None:
    """An ignore path as ``model_signing`` applies it (relative to DIR): None when it ignores nothing,
    "" when it ignores everything ("." )."""
    if not path or path.startswith("/") or "\x00" in path:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def _ignored(name: str, ignores: Iterable[str]) -> bool:
    return any(i == "" or name == i or name.startswith(i + "/") for i in ignores)


def _effective_ignores(signature_name: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    out = {signature_name, *DEFAULT_IGNORES}
    for p in extra:
        n = _normalise_ignore(p)
        if n is not None:
            out.add(n)
    return tuple(sorted(out))


# --- files -----------------------------------------------------------------------------------------

def hash_file(path: Path | str, *, cancel: threading.Event | None = None,
              on_bytes: Callable[[int], None] | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of a regular file, read in 1 MiB chunks; refuses a symlink (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        size = 0
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
            if on_bytes is not None:
                on_bytes(n)
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"hashing {path} cancelled")
        return size, h.hexdigest()


def scan_directory(directory: Path, ignores: Sequence[str]) -> dict[str, Path]:
    """Every regular file under ``directory`` that is not ignored, by relative name.

    VerificationFailed ``symlink`` for a symlink anywhere below (ignored places included, as
    ``model_signing`` does), ``bad_path`` for a special file or a name that is not UTF-8."""
    found: dict[str, Path] = {}
    stack: list[tuple[Path, str]] = [(directory, "")]
    while stack:
        here, prefix = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError as exc:
            raise VerificationFailed("bad_path", f"{here} cannot be listed: {exc.strerror or exc}",
                                     path=prefix or ".") from None
        for entry in entries:
            rel = prefix + entry.name
            shown = directory / rel
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise VerificationFailed("bad_path", f"{str(shown)!r}: the file name is not valid UTF-8", path=rel) from None
            if entry.is_symlink():
                raise VerificationFailed("symlink", f"{shown} is a symbolic link; a release holds plain files only",
                                         path=rel, hint="copy the file it points to instead of linking it")
            if entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), rel + "/"))
            elif entry.is_file(follow_symlinks=False):
                if not _ignored(rel, ignores):
                    found[rel] = Path(entry.path)
            else:
                raise VerificationFailed("bad_path", f"{shown} is not a regular file (a device, pipe or socket)",
                                         path=rel)
    return found


def hash_files(files: dict[str, Path], *, cancel: threading.Event | None = None,
               progress: Progress | None = None) -> list[FileDigest]:
    """sha256 of every file (in parallel when there are several), in ``model_signing`` order."""
    names = sorted(files, key=resource_sort_key)
    sizes = {}
    for n in names:
        try:
            sizes[n] = files[n].stat().st_size
        except OSError:
            sizes[n] = 0
    total = sum(sizes.values())
    done = [0]
    lock = threading.Lock()

    def on_bytes(n: int) -> None:
        with lock:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

    def one(name: str) -> FileDigest:
        try:
            size, digest = hash_file(files[name], cancel=cancel, on_bytes=on_bytes if progress else None)
        except Cancelled:
            raise
        except OSError as exc:
            if os.path.islink(files[name]):
                raise VerificationFailed("symlink", f"{files[name]} is a symbolic link", path=name) from None
            raise VerificationFailed("bad_path", f"{files[name]} cannot be read: {exc.strerror or exc}",
                                     path=name) from None
        return FileDigest(name, size, digest)

    _check_cancel(cancel, "hashing")
    workers = min(len(names), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [one(n) for n in names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fieldkit-hash") as pool:
        return list(pool.map(one, names))


def _check_directory(directory: Path) -> Path:
    directory = Path(directory)
    if directory.is_symlink():
        raise VerificationFailed("symlink", f"{directory} is a symbolic link; give the directory itself",
                                 path=".")
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory" if directory.exists() else f"{directory} does not exist")
    return directory


def _check_signature_name(signature_name: str) -> None:
    if name_problem(signature_name) is not None or "/" in signature_name:
        raise ConfigError(f"signature name {signature_name!r} must be a plain file name")


# --- signing -----------------------------------------------------------------------------------

def _statement_bytes(subject_name: str, files: Sequence[FileDigest], ignore_paths: Sequence[str]) -> bytes:
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


def sign_directory(directory: Path | str, private_key: Any, *, signature_name: str = SIGNATURE_NAME,
                   subject_name: str | None = None, cancel: threading.Event | None = None,
                   progress: Progress | None = None) -> Signed:
    """Sign every file of ``directory`` (except the ignored ones) into ``directory/signature_name``.

    ``private_key``: a key object or the path of a PEM file (0600, see :func:`signing.load_private_key`).
    A symlink or special file in the directory is a ConfigError naming it. The signature is written
    atomically; ``subject_name`` defaults to the directory's base name (informative only)."""
    directory = Path(directory)
    _check_signature_name(signature_name)
    if isinstance(private_key, (str, os.PathLike)):
        private_key = signing.load_private_key(Path(private_key), what="signing key")
    try:
        _check_directory(directory)
        ignores = _effective_ignores(signature_name)
        files = hash_files(scan_directory(directory, ignores), cancel=cancel, progress=progress)
    except VerificationFailed as exc:
        raise ConfigError(f"cannot sign {directory}: {exc.message}", hint=exc.hint) from None
    _check_cancel(cancel, "signing")
    ignore_paths = sorted({*DEFAULT_IGNORES, signature_name})
    payload = _statement_bytes(subject_name or directory.resolve().name, files, ignore_paths)
    sig = signing.sign_bytes(private_key, pae(PAYLOAD_TYPE, payload))
    hint = public_key_hint(private_key)
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": sig, "keyid": ""}],
        },
    }
    out = directory / signature_name
    atomic_write(out, json.dumps(bundle, separators=(",", ":")))
    return Signed(directory=directory, signature=out, digest=subject_digest(f.sha256 for f in files),
                  signer=signing.key_fingerprint(private_key.public_key()), hint=hint, files=tuple(files))


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


# --- verifying -------------------------------------------------------------------------------------

def _keys(public_keys: Sequence[Any]) -> list[tuple[Any, str | None]]:
    out = []
    for k in public_keys:
        if isinstance(k, (str, os.PathLike)) and not (isinstance(k, str) and "-----BEGIN" in k):
            out.append((load_public_key_file(k), str(k)))
        elif isinstance(k, (str, bytes)):
            try:
                out.append((signing.load_public_key(k), None))
            except ValueError as exc:
                raise ConfigError(f"not an ECDSA P-256 public key: {exc}") from None
        else:
            out.append((k.public_key() if hasattr(k, "private_bytes") else k, None))
    if not out:
        raise ConfigError("no public key to verify with", hint="give the release key with --key PUB.pem")
    return out


def _names(names: Iterable[str], limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def verify_directory(directory: Path | str, public_keys: Sequence[Any], *, signature_name: str = SIGNATURE_NAME,
                     cancel: threading.Event | None = None, progress: Progress | None = None) -> Verified:
    """Check ``directory/signature_name`` against ``public_keys`` (key objects, PEM text or PEM file paths)
    and every file of the directory against it: no file changed, none missing, none added, no
    symlinks. Raises VerificationFailed with a ``code`` from :data:`CODES`; ConfigError for bad keys."""
    directory = Path(directory)
    _check_signature_name(signature_name)
    keys = _keys(public_keys)
    _check_directory(directory)
    sig_path = directory / signature_name
    bundle = read_signature(sig_path)
    _check_cancel(cancel, "verification")

    # 1. who signed it
    message = hashlib.sha256(pae(bundle.payload_type, bundle.payload)).digest()
    der_b64 = base64.b64encode(bundle.signature).decode()
    hinted = [(k, src, public_key_hint(k)) for k, src in keys]
    if bundle.hint is not None:
        candidates = [c for c in hinted if c[2] == bundle.hint]
        if not candidates:
            trusted = ", ".join(signing.key_fingerprint(k) for k, _ in keys)
            raise VerificationFailed(
                "untrusted_key", f"{sig_path} was signed by a key that is not trusted here (key hint "
                f"{bundle.hint[:16]}...); trusted: {trusted}", path=signature_name,
                hint="if the release key was rotated, add the new public key to the trusted keys")
    else:
        candidates = hinted
    signer = next((c for c in candidates if signing.verify_digest(c[0], message, der_b64)), None)
    if signer is None:
        if bundle.hint is not None:
            msg = f"{sig_path}: the signature does not verify (the signature file was altered)"
        else:
            msg = f"{sig_path}: the signature does not verify with any of the {len(keys)} trusted key(s)"
        raise VerificationFailed("bad_signature", msg, path=signature_name)
    key, key_source, hint = signer

    # 2. what it says (authenticated from here on)
    st = bundle.statement
    if bundle.payload_type != PAYLOAD_TYPE:
        raise VerificationFailed("bad_signature", f"{sig_path}: payload type {bundle.payload_type!r}, expected "
                                 f"{PAYLOAD_TYPE}", path=signature_name)
    if subject_digest(r.digest for r in st.resources) != st.subject_digest:
        raise VerificationFailed("bad_signature", f"{sig_path}: the subject digest does not match the listed "
                                 "files (an inconsistent manifest)", path=signature_name)
    expected: dict[str, str] = {}
    for r in st.resources:
        why = name_problem(r.name)
        if why is not None:
            raise VerificationFailed("bad_path", f"{sig_path}: the signed file name {r.name[:200]!r} {why}",
                                     path=signature_name)
        if r.name in expected:
            raise VerificationFailed("bad_signature", f"{sig_path} lists {r.name!r} twice", path=signature_name)
        expected[r.name] = r.digest

    # 3. what is there
    ignores = _effective_ignores(signature_name, st.ignore_paths)
    actual = scan_directory(directory, ignores)
    extra = sorted(set(actual) - set(expected), key=resource_sort_key)
    if extra:
        raise VerificationFailed("extra_file", f"{directory}: {_names(extra)} not covered by the signature",
                                 path=extra[0], hint="remove it, or re-sign the directory if it belongs to the release")
    missing = sorted(set(expected) - set(actual), key=resource_sort_key)
    if missing:
        raise VerificationFailed("missing_file", f"{directory}: {_names(missing)} signed but missing", path=missing[0])
    files = hash_files(actual, cancel=cancel, progress=progress)
    for f in files:
        if f.sha256 != expected[f.name]:
            raise VerificationFailed(
                "tampered", f"{directory / f.name} was changed after signing: sha256 {f.sha256}, the signature "
                f"says {expected[f.name]}", path=f.name, expected=expected[f.name], actual=f.sha256)
    by_name = {f.name: f for f in files}
    ordered = tuple(by_name[r.name] for r in st.resources)
    return Verified(directory=directory, signature=sig_path, digest=st.subject_digest, subject_name=st.subject_name,
                    signer=signing.key_fingerprint(key), hint=hint, key_source=key_source, files=ordered,
                    ignore_paths=ignores)
