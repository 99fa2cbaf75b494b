"""OpenSSF Model Signing verification on the device (stdlib only, Python 3.6 syntax).

A release directory carries ``model.sig``: a Sigstore bundle (v0.3, key mode) holding a DSSE
envelope whose payload is an in-toto Statement v1 listing every file with its sha256 (the format
of the ``model_signing`` 1.1.1 package; docs/releases.md). This module checks, in this order:

1. the bundle: media type, ``verificationMaterial.publicKey.hint``, the envelope's payload type,
   payload and signatures (every field type-checked and bounded; base64 decoded strictly);
2. the DSSE signature: ECDSA P-256 / SHA-256 (DER) over the PAE
   ``b"DSSEv1 " + len(type) + b" " + type + b" " + len(payload) + b" " + payload``, against each
   trust anchor, with ``cryptography`` when the device has it and else with the pure-Python
   ``ecdsa`` package that travels inside the agent zipapp (``FIELDKIT_AGENT_NO_CRYPTOGRAPHY=1``
   forces the pure-Python path: tests, or a device whose ``cryptography`` is broken);
3. the statement: ``_type``, ``predicateType``, one subject whose ``digest.sha256`` is the sha256
   of the resources' digests (raw bytes, in the listed order: model_signing's rule), the
   serialization (``files``, ``sha256``) and every resource name (a relative path that stays in
   the directory, listed once);
4. the directory itself: no symlinks and nothing but regular files and directories anywhere; every
   file not ignored (``ignore_paths``, ``model.sig``, the git files model_signing always ignores)
   is a signed resource (``extra_file``), every resource is there (``missing_file``) and hashes to
   its signed digest (``tampered``).

Errors are :class:`~fieldkit.agent.protocol.RemoteError` with the codes of docs/releases.md
(``no_anchors``, ``not_signed``, ``bad_signature``, ``untrusted_key``, ``tampered``,
``extra_file``, ``missing_file``, ``symlink``, ``bad_path``) and a message naming the file.
"""

import base64
import binascii
import hashlib
import json
import os
import re
import stat

from fieldkit.agent.fields import shorten
from fieldkit.agent.protocol import RemoteError

SIG_FILE = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
ALWAYS_IGNORED = (SIG_FILE, ".git", ".github", ".gitattributes", ".gitignore")  # model_signing's defaults
NO_CRYPTOGRAPHY_ENV = "FIELDKIT_AGENT_NO_CRYPTOGRAPHY"

MAX_SIG_BYTES = 8 << 20
MAX_RESOURCES = 20000
MAX_SIGNATURES = 8
MAX_SIG_DER = 200         # an ECDSA P-256 DER signature is at most 72 bytes
MAX_NAME = 1024
MAX_DEPTH = 32
MAX_PEM = 16 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 1 << 20


# ---- keys ---------------------------------------------------------------------------------------
class PublicKey(object):
    """An EC P-256 public key: canonical DER SubjectPublicKeyInfo, its fingerprint and hint."""

    def __init__(self, der, impl, backend):
        self.der = der
        self.impl = impl
        self.backend = backend
        self.pem = der_to_pem(der)
        self.fingerprint = fingerprint(der)
        self.hint = hashlib.sha256(self.pem).hexdigest()  # what model_signing writes as the hint

    def verify(self, sig, message):
        return _verify(self, sig, message)


def fingerprint(der):
    """``SHA256:`` + unpadded base64 of the sha256 of the DER SubjectPublicKeyInfo (the ssh style)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode("ascii").rstrip("=")


def der_to_pem(der):
    """The PEM text ``cryptography``/``openssl`` write for a public key (64-column base64)."""
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return ("-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n").encode("ascii")


def pem_to_der(pem, what="the key"):
    """The DER bytes of the one ``PUBLIC KEY`` block in ``pem`` (text or bytes); RemoteError
    ``bad_key`` for anything else (a private key, a certificate, junk)."""
    if isinstance(pem, bytes):
        try:
            pem = pem.decode("ascii")
        except UnicodeDecodeError:
            raise RemoteError("bad_key", "%s is not PEM text (it holds non-ASCII bytes)" % what)
    if not isinstance(pem, str) or not pem.strip():
        raise RemoteError("bad_key", "%s is empty; give an EC P-256 public key in PEM" % what)
    if len(pem) > MAX_PEM:
        raise RemoteError("bad_key", "%s is %d characters long; a public key PEM is far shorter" % (what, len(pem)))
    if "PRIVATE KEY" in pem:
        raise RemoteError("bad_key", "%s is a PRIVATE key: only the public key goes on a device "
                                     "(openssl ec -in KEY -pubout)" % what)
    if "BEGIN CERTIFICATE" in pem:
        raise RemoteError("bad_key", "%s is a certificate; give the release key's public key "
                                     "(-----BEGIN PUBLIC KEY-----)" % what)
    begin, end = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
    if pem.count(begin) != 1 or pem.count(end) != 1:
        raise RemoteError("bad_key", "%s must hold exactly one -----BEGIN PUBLIC KEY----- block" % what)
    body = pem[pem.index(begin) + len(begin):pem.index(end)]
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RemoteError("bad_key", "%s: the PEM body is not valid base64" % what)
    return der


def _no_cryptography():
    return os.environ.get(NO_CRYPTOGRAPHY_ENV, "") not in ("", "0")


def backend_name():
    """``cryptography`` or ``ecdsa`` (the pure-Python fallback), or None when neither is there."""
    if not _no_cryptography():
        try:
            from cryptography.hazmat.primitives.asymmetric import ec  # noqa: F401
            return "cryptography"
        except Exception:  # ImportError, or a broken build (missing shared library)
            pass
    try:
        import ecdsa  # noqa: F401
        return "ecdsa"
    except Exception:
        return None


def load_public_key(der, what="the key", backend=None):
    """A :class:`PublicKey` from DER; RemoteError ``bad_key`` unless it is an EC P-256 public key."""
    backend = backend or backend_name()
    if backend is None:
        raise RemoteError("no_verifier", "this device has neither the cryptography package nor the ecdsa package "
                                         "the agent zipapp carries; cannot check keys or signatures")
    if not isinstance(der, bytes) or len(der) < 16 or len(der) > 1024 or der[:1] != b"\x30":
        raise RemoteError("bad_key", "%s is not a DER SubjectPublicKeyInfo" % what)
    if backend == "cryptography":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        try:
            impl = serialization.load_der_public_key(der)
        except Exception as exc:  # ValueError, UnsupportedAlgorithm: hostile bytes
            raise RemoteError("bad_key", "%s is not a public key this device can read: %s" % (what, shorten(str(exc), 120)))
        if not isinstance(impl, ec.EllipticCurvePublicKey) or impl.curve.name != "secp256r1":
            raise RemoteError("bad_key", "%s is not an EC P-256 key (release keys are ECDSA P-256)" % what)
        canonical = impl.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        import ecdsa
        try:
            impl = ecdsa.VerifyingKey.from_der(der)
        except Exception as exc:  # UnexpectedDER, MalformedPointError, ValueError: hostile bytes
            raise RemoteError("bad_key", "%s is not an EC P-256 public key: %s" % (what, shorten(str(exc), 120)))
        if impl.curve != ecdsa.NIST256p:
            raise RemoteError("bad_key", "%s is not an EC P-256 key (release keys are ECDSA P-256)" % what)
        canonical = impl.to_der()
    return PublicKey(canonical, impl, backend)


def load_public_pem(pem, what="the key", backend=None):
    return load_public_key(pem_to_der(pem, what), what, backend)


def _verify(key, sig, message):
    """True when ``sig`` (DER) is key's ECDSA P-256/SHA-256 signature of ``message``."""
    if key.backend == "cryptography":
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        try:
            key.impl.verify(sig, message, ec.ECDSA(hashes.SHA256()))
            return True
        except (InvalidSignature, ValueError):
            return False
    import ecdsa
    from ecdsa.util import sigdecode_der
    try:
        return bool(key.impl.verify(sig, message, hashfunc=hashlib.sha256, sigdecode=sigdecode_der))
    except Exception:  # BadSignatureError, UnexpectedDER, ValueError on a hostile signature
        return False


def pae(payload_type, payload):
    """DSSE v1 pre-authentication encoding (lengths in decimal ASCII)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(payload)).encode() + b" " + payload


# ---- the signature file -------------------------------------------------------------------------
class Statement(object):
    """What a verified model.sig says: ``digest`` (subject), ``resources`` ({name: sha256 hex}, in
    signed order as ``names``), ``ignore`` (relative paths), ``signer`` (the anchor that verified)."""

    def __init__(self, digest, subject, names, resources, ignore, signer, hint):
        self.digest = digest
        self.subject = subject
        self.names = names
        self.resources = resources
        self.ignore = ignore
        self.signer = signer
        self.hint = hint


def _sig_error(where, what):
    return RemoteError("bad_signature", "%s: %s" % (where, what))


def _b64(value, where, field, limit):
    if not isinstance(value, str) or not value:
        raise _sig_error(where, "%s must be base64 text, got %s" % (field, shorten(value, 40)))
    if len(value) > limit * 4 // 3 + 8:
        raise _sig_error(where, "%s is %d characters long; the limit is %d bytes" % (field, len(value), limit))
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _sig_error(where, "%s is not valid base64" % field)


def _obj(value, where, field):
    if not isinstance(value, dict):
        raise _sig_error(where, "%s must be an object, got %s" % (field, type(value).__name__))
    return value


def read_sig_file(real, label):
    """The bytes of ``real/model.sig``; RemoteError ``not_signed`` when there is none."""
    from fieldkit.agent.files import open_nofollow
    path = os.path.join(real, SIG_FILE)
    where = "%s/%s" % (label, SIG_FILE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RemoteError("not_signed", "%s has no %s: the release is not signed (fieldkit release sign)"
                          % (label, SIG_FILE))
    if stat.S_ISLNK(st.st_mode):
        raise RemoteError("symlink", "%s is a symlink; refused" % where)
    if st.st_size > MAX_SIG_BYTES:
        raise _sig_error(where, "%d bytes; the limit is %d" % (st.st_size, MAX_SIG_BYTES))
    fd = open_nofollow(path, where, os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(MAX_SIG_BYTES + 1)


def parse_bundle(raw, where):
    """``(hint or None, payload bytes, [signature DER bytes])`` from the bundle JSON ``raw``."""
    if len(raw) > MAX_SIG_BYTES:
        raise _sig_error(where, "larger than %d bytes" % MAX_SIG_BYTES)
    try:
        bundle = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _sig_error(where, "not JSON (%s)" % shorten(str(exc), 100))
    _obj(bundle, where, "the bundle")
    media = bundle.get("mediaType")
    if media != BUNDLE_MEDIA_TYPE:
        raise _sig_error(where, "mediaType is %s, expected %s" % (shorten(media, 80), BUNDLE_MEDIA_TYPE))
    material = _obj(bundle.get("verificationMaterial"), where, "verificationMaterial")
    hint = None
    if material.get("publicKey") is not None:
        hint = _obj(material["publicKey"], where, "verificationMaterial.publicKey").get("hint")
        if hint is not None and (not isinstance(hint, str) or not _HEX64.match(hint)):
            raise _sig_error(where, "verificationMaterial.publicKey.hint must be 64 hex digits, got %s"
                             % shorten(hint, 80))
    else:
        raise _sig_error(where, "no verificationMaterial.publicKey: not a key-mode signature (certificate and "
                                "Sigstore keyless signatures are not accepted by devices)")
    env = _obj(bundle.get("dsseEnvelope"), where, "dsseEnvelope")
    if env.get("payloadType") != PAYLOAD_TYPE:
        raise _sig_error(where, "dsseEnvelope.payloadType is %s, expected %s"
                         % (shorten(env.get("payloadType"), 80), PAYLOAD_TYPE))
    payload = _b64(env.get("payload"), where, "dsseEnvelope.payload", MAX_SIG_BYTES)
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise _sig_error(where, "dsseEnvelope.signatures must be a non-empty list")
    if len(sigs) > MAX_SIGNATURES:
        raise _sig_error(where, "%d signatures; the limit is %d" % (len(sigs), MAX_SIGNATURES))
    ders = []
    for i, s in enumerate(sigs):
        field = "dsseEnvelope.signatures[%d]" % i
        _obj(s, where, field)
        if s.get("keyid") is not None and not isinstance(s.get("keyid"), str):
            raise _sig_error(where, "%s.keyid must be text" % field)
        ders.append(_b64(s.get("sig"), where, field + ".sig", MAX_SIG_DER))
    return hint, payload, ders


def check_relpath(name, where, field, code="bad_signature"):
    """A relative POSIX path that stays inside its directory: no '..', no empty parts."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\x00" in name or "\\" in name:
        raise RemoteError(code, "%s: %s must be a relative path, got %s" % (where, field, shorten(name, 80)))
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or len(parts) > MAX_DEPTH:
        raise RemoteError(code, "%s: %s %s leaves the release directory or is not a plain relative path"
                          % (where, field, shorten(name, 80)))
    return name


def parse_statement(payload, where):
    """``(subject digest, subject name, [names], {name: digest}, [ignore paths])``."""
    try:
        st = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _sig_error(where, "the signed payload is not JSON (%s)" % shorten(str(exc), 100))
    _obj(st, where, "the statement")
    if st.get("_type") != STATEMENT_TYPE:
        raise _sig_error(where, "_type is %s, expected %s" % (shorten(st.get("_type"), 80), STATEMENT_TYPE))
    if st.get("predicateType") != PREDICATE_TYPE:
        raise _sig_error(where, "predicateType is %s, expected %s"
                         % (shorten(st.get("predicateType"), 80), PREDICATE_TYPE))
    subjects = st.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise _sig_error(where, "the statement must have exactly one subject")
    subject = _obj(subjects[0], where, "subject[0]")
    digest = _obj(subject.get("digest"), where, "subject[0].digest").get("sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise _sig_error(where, "subject[0].digest.sha256 must be 64 lowercase hex digits")
    subject_name = subject.get("name")
    if subject_name is not None and not isinstance(subject_name, str):
        raise _sig_error(where, "subject[0].name must be text")
    pred = _obj(st.get("predicate"), where, "predicate")
    ser = _obj(pred.get("serialization"), where, "predicate.serialization")
    if ser.get("method") != "files":
        raise _sig_error(where, "serialization method %s is not supported on devices (sign with the default "
                                "'files' method)" % shorten(ser.get("method"), 40))
    if ser.get("hash_type") != "sha256":
        raise _sig_error(where, "hash_type %s is not supported on devices (sha256 only)"
                         % shorten(ser.get("hash_type"), 40))
    if not isinstance(ser.get("allow_symlinks", False), bool):
        raise _sig_error(where, "allow_symlinks must be true or false")
    ignore = ser.get("ignore_paths", [])
    if not isinstance(ignore, list) or len(ignore) > 256:
        raise _sig_error(where, "ignore_paths must be a list of at most 256 paths")
    ignored = []
    for i, p in enumerate(ignore):
        if isinstance(p, str):
            p = p.rstrip("/")
            while p.startswith("./"):
                p = p[2:]
        ignored.append(check_relpath(p, where, "ignore_paths[%d]" % i))
    resources = pred.get("resources")
    if not isinstance(resources, list) or not resources:
        raise _sig_error(where, "predicate.resources must be a non-empty list")
    if len(resources) > MAX_RESOURCES:
        raise _sig_error(where, "%d resources; the limit is %d" % (len(resources), MAX_RESOURCES))
    names = []
    table = {}
    root = hashlib.sha256()
    for i, r in enumerate(resources):
        field = "resources[%d]" % i
        _obj(r, where, field)
        name = check_relpath(r.get("name"), where, field + ".name")
        if r.get("algorithm") != "sha256":
            raise _sig_error(where, "%s (%s): algorithm must be sha256" % (field, shorten(name, 80)))
        d = r.get("digest")
        if not isinstance(d, str) or not _HEX64.match(d):
            raise _sig_error(where, "%s (%s): digest must be 64 lowercase hex digits" % (field, shorten(name, 80)))
        if name in table:
            raise _sig_error(where, "%s is listed twice" % shorten(name, 80))
        if name == SIG_FILE:
            raise _sig_error(where, "the signature file itself is listed as a resource")
        table[name] = d
        names.append(name)
        root.update(binascii.unhexlify(d))
    if root.hexdigest() != digest:
        raise _sig_error(where, "the subject digest %s is not the digest of the listed files (%s): the statement "
                                "is inconsistent" % (digest, root.hexdigest()))
    return digest, subject_name, names, table, ignored


def check_signature(raw, anchors, where):
    """Verify the bundle ``raw`` against ``anchors`` (PublicKey list): a :class:`Statement`."""
    if not anchors:
        raise RemoteError("no_anchors", "this device trusts no release key (none in its trust directory); add one "
                                        "with: fieldkit anchors add DEVICE KEY.pub")
    hint, payload, sigs = parse_bundle(raw, where)
    message = pae(PAYLOAD_TYPE, payload)
    ordered = [a for a in anchors if a.hint == hint] + [a for a in anchors if a.hint != hint]
    signer = None
    for key in ordered:
        if any(key.verify(sig, message) for sig in sigs):
            signer = key
            break
    if signer is None:
        if hint is not None and not any(a.hint == hint for a in anchors):
            raise RemoteError("untrusted_key", "%s was signed by a key this device does not trust (key hint %s...); "
                                               "trusted: %s" % (where, hint[:16],
                                                                ", ".join(a.fingerprint for a in anchors)))
        raise RemoteError("bad_signature", "%s: the signature does not verify with %s: the signed statement was "
                                           "altered or the signature damaged"
                          % (where, "the key it names" if hint is not None else "any trusted key"))
    digest, subject, names, table, ignore = parse_statement(payload, where)
    return Statement(digest, subject, names, table, ignore, signer, hint)


# ---- the directory --------------------------------------------------------------------------------
def is_ignored(rel, ignore):
    for p in ignore:
        if rel == p or rel.startswith(p + "/"):
            return True
    return False


def scan_dir(real, label, ignore=ALWAYS_IGNORED, limit=MAX_RESOURCES * 2):
    """``({relpath: size}, [ignored relpaths])`` of every file under ``real``; RemoteError
    ``symlink`` / ``bad_path`` for a symlink or anything but files and directories, anywhere."""
    files = {}
    skipped = []
    stack = [("", real, 0)]
    while stack:
        rel_dir, full_dir, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RemoteError("bad_path", "%s/%s is nested deeper than %d directories" % (label, rel_dir, MAX_DEPTH))
        try:
            names = sorted(os.listdir(full_dir))
        except OSError as exc:
            raise RemoteError("io_error", "cannot list %s/%s: %s" % (label, rel_dir, exc.strerror or exc))
        for n in names:
            rel = rel_dir + "/" + n if rel_dir else n
            full = os.path.join(full_dir, n)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise RemoteError("symlink", "%s/%s is a symlink; a release holds only regular files" % (label, rel))
            if stat.S_ISDIR(st.st_mode):
                if is_ignored(rel, ignore):
                    skipped.append(rel)
                stack.append((rel, full, depth + 1))
            elif stat.S_ISREG(st.st_mode):
                if is_ignored(rel, ignore):
                    skipped.append(rel)
                else:
                    files[rel] = st.st_size
                    if len(files) > limit:
                        raise RemoteError("extra_file", "%s holds more than %d files" % (label, limit))
            else:
                raise RemoteError("bad_path", "%s/%s is not a regular file or directory" % (label, rel))
    return files, skipped


def hash_file(full, rel, check=None):
    from fieldkit.agent.files import open_nofollow
    fd = open_nofollow(full, rel, os.O_RDONLY)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        while True:
            if check is not None:
                check()
            block = fh.read(_BLOCK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _names(items, n=5):
    items = sorted(items)
    return ", ".join(items[:n]) + (" and %d more" % (len(items) - n) if len(items) > n else "")


def check_files(real, label, statement, check=None):
    """Every file of ``real`` against the signed list: RemoteError ``extra_file``, ``missing_file``
    or ``tampered`` naming the files. Returns the ignored paths present (not part of the release)."""
    ignore = list(ALWAYS_IGNORED) + list(statement.ignore)
    files, skipped = scan_dir(real, label, ignore)
    extra = [f for f in files if f not in statement.resources]
    if extra:
        partial = [f for f in extra if f.endswith(".part") and f[:-5] in statement.resources]
        raise RemoteError("extra_file", "%s holds %s, which the signature does not cover%s"
                          % (label, _names(extra), " (an unfinished upload: resume the transfer)" if partial else ""))
    missing = [n for n in statement.names if n not in files]
    if missing:
        raise RemoteError("missing_file", "%s lacks %s, which the signature lists" % (label, _names(missing)))
    bad = []
    for name in statement.names:
        got = hash_file(os.path.join(real, *name.split("/")), "%s/%s" % (label, name), check)
        if got != statement.resources[name]:
            bad.append(name)
    if bad:
        raise RemoteError("tampered", "%s: %s differ%s from the signed digest" % (label, _names(bad),
                                                                               "s" if len(bad) == 1 else ""))
    return skipped


def verify_dir(real, label, anchors, check=None):
    """The whole check of a release directory: a :class:`Statement` (``.skipped``: ignored paths present)."""
    if not anchors:
        check_signature(b"", anchors, label)  # raises no_anchors
    raw = read_sig_file(real, label)
    statement = check_signature(raw, anchors, "%s/%s" % (label, SIG_FILE))
    statement.skipped = check_files(real, label, statement, check)
    return statement
