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
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from fieldkit import signing
from fieldkit.errors import ConfigError
from fieldkit.fsutil import atomic_write
# The format (omsformat) and the directory walk and hashing (omsfiles) live apart; the names of
# __all__ (and effective_ignores, Progress) stay importable from here, the interface callers use.
from fieldkit.omsfiles import (Progress, check_cancel, check_directory, check_signature_name, effective_ignores,
                               hash_file, hash_files, scan_directory)
from fieldkit.omsformat import (BUNDLE_MEDIA_TYPE, CODES, DEFAULT_IGNORES, PAYLOAD_TYPE, PREDICATE_TYPE,
                                SIGNATURE_NAME, STATEMENT_TYPE, Bundle, FileDigest, Resource, Statement,
                                VerificationFailed, bundle_json, name_problem, pae, parse_signature,
                                public_key_hint, read_signature, resource_sort_key, statement_bytes,
                                subject_digest)

__all__ = [
    "BUNDLE_MEDIA_TYPE", "PAYLOAD_TYPE", "STATEMENT_TYPE", "PREDICATE_TYPE", "DEFAULT_IGNORES",
    "SIGNATURE_NAME", "CODES", "VerificationFailed", "FileDigest", "Resource", "Statement", "Bundle",
    "Signed", "Verified", "pae", "subject_digest", "resource_sort_key", "public_key_hint",
    "load_public_key_file", "hash_file", "scan_directory", "hash_files", "sign_directory",
    "parse_signature", "read_signature", "verify_directory", "name_problem",
]


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


# --- keys ----------------------------------------------------------------------------------------

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


# --- signing -----------------------------------------------------------------------------------

def sign_directory(directory: Path | str, private_key: Any, *, signature_name: str = SIGNATURE_NAME,
                   subject_name: str | None = None, cancel: threading.Event | None = None,
                   progress: Progress | None = None) -> Signed:
    """Sign every file of ``directory`` (except the ignored ones) into ``directory/signature_name``.

    ``private_key``: a key object or the path of a PEM file (0600, see :func:`signing.load_private_key`).
    A symlink or special file in the directory is a ConfigError naming it. The signature is written
    atomically; ``subject_name`` defaults to the directory's base name (informative only)."""
    directory = Path(directory)
    check_signature_name(signature_name)
    if isinstance(private_key, (str, os.PathLike)):
        private_key = signing.load_private_key(Path(private_key), what="signing key")
    try:
        check_directory(directory)
        ignores = effective_ignores(signature_name)
        files = hash_files(scan_directory(directory, ignores), cancel=cancel, progress=progress)
    except VerificationFailed as exc:
        raise ConfigError(f"cannot sign {directory}: {exc.message}", hint=exc.hint) from None
    check_cancel(cancel, "signing")
    ignore_paths = sorted({*DEFAULT_IGNORES, signature_name})
    payload = statement_bytes(subject_name or directory.resolve().name, files, ignore_paths)
    sig = signing.sign_bytes(private_key, pae(PAYLOAD_TYPE, payload))
    hint = public_key_hint(private_key)
    out = directory / signature_name
    atomic_write(out, bundle_json(payload, sig, hint))
    return Signed(directory=directory, signature=out, digest=subject_digest(f.sha256 for f in files),
                  signer=signing.key_fingerprint(private_key.public_key()), hint=hint, files=tuple(files))


# --- verifying -------------------------------------------------------------------------------------

def verify_directory(directory: Path | str, public_keys: Sequence[Any], *, signature_name: str = SIGNATURE_NAME,
                     cancel: threading.Event | None = None, progress: Progress | None = None) -> Verified:
    """Check ``directory/signature_name`` against ``public_keys`` (key objects, PEM text or PEM file paths)
    and every file of the directory against it: no file changed, none missing, none added, no
    symlinks. Raises VerificationFailed with a ``code`` from :data:`CODES`; ConfigError for bad keys."""
    directory = Path(directory)
    check_signature_name(signature_name)
    keys = _keys(public_keys)
    check_directory(directory)
    sig_path = directory / signature_name
    bundle = read_signature(sig_path)
    check_cancel(cancel, "verification")

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
    ignores = effective_ignores(signature_name, st.ignore_paths)
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
