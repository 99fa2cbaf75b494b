"""Keys, canonical JSON and signatures: one module for the journal, releases, manifests and reports.

Every signature fieldkit makes is ECDSA P-256 over SHA-256, DER-encoded (the form ``openssl dgst
-sha256 -sign`` writes and the OpenSSF Model Signing format uses). What gets signed is either a
digest computed by the caller (``sign_digest``) or bytes hashed here (``sign_bytes``).

Canonical JSON (``canonical``): sorted keys, no whitespace, UTF-8, no NaN/Infinity — the same
function the device's journal uses, so both sides hash the same bytes.

Key fingerprints are ``SHA256:`` + unpadded base64 of the sha256 of the DER SubjectPublicKeyInfo
(the OpenSSH style technicians already compare).
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from fieldkit.agent.devjournal import canonical  # noqa: F401  (re-exported: one canonical JSON)
from fieldkit.errors import ConfigError
from fieldkit.fsutil import atomic_write

__all__ = [
    "canonical", "canonical_text", "generate_private_key", "private_key_pem", "public_key_pem",
    "load_private_key", "load_public_key", "key_fingerprint", "sign_digest", "sign_bytes",
    "verify_digest", "verify_bytes", "write_private_key",
]


def canonical_text(obj: Any) -> str:
    """``canonical(obj)`` as text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@lru_cache(maxsize=1)
def _prehashed() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    return ec.ECDSA(utils.Prehashed(hashes.SHA256()))


def generate_private_key() -> Any:
    """A new ECDSA P-256 private key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: Any) -> bytes:
    """PKCS#8 PEM, unencrypted (the file is protected by its mode, 0600)."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Any) -> str:
    """SubjectPublicKeyInfo PEM of a public key (or of a private key's public half)."""
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if hasattr(key, "private_bytes") else key
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def write_private_key(path: Path, key: Any) -> None:
    """Write ``key`` to ``path`` as PKCS#8 PEM with mode 0600, atomically."""
    atomic_write(path, private_key_pem(key), mode=0o600)


def load_private_key(path: Path, *, what: str = "key") -> Any:
    """An ECDSA P-256 private key from a PEM file that only its owner can read.

    ConfigError (exit 2) names the file and what is wrong: missing, readable by others, not a
    key, another curve."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from exc
    mode = st.st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by others (mode {mode:04o})",
                          hint=f"run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{what} {path} is not an ECDSA P-256 private key")
    return key


def load_public_key(pem: str | bytes) -> Any:
    """An ECDSA P-256 public key from PEM text; ValueError for anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    raw = pem.encode() if isinstance(pem, str) else bytes(pem)
    key = serialization.load_pem_public_key(raw)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def key_fingerprint(public_key: Any) -> str:
    """``SHA256:`` + unpadded base64 of the sha256 of the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def sign_digest(private_key: Any, digest: bytes) -> str:
    """Base64 DER ECDSA signature of a sha256 ``digest``."""
    return base64.b64encode(private_key.sign(digest, _prehashed())).decode()


def sign_bytes(private_key: Any, data: bytes) -> str:
    """Base64 DER ECDSA P-256 / SHA-256 signature of ``data``."""
    return sign_digest(private_key, hashlib.sha256(data).digest())


def verify_digest(public_key: Any, digest: bytes, sig_b64: str) -> bool:
    """True when ``sig_b64`` is a valid signature of ``digest``; False for anything else."""
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(sig_b64, validate=True), digest, _prehashed())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def verify_bytes(public_key: Any, data: bytes, sig_b64: str) -> bool:
    return verify_digest(public_key, hashlib.sha256(data).digest(), sig_b64)

