"""Operator authentication over serial (stdlib only, Python 3.6 syntax).

Over SSH the device's sshd has already authenticated the operator. A serial port has no login once
the agent replaces the getty, so a session over serial (``serve --serial``) must authenticate
before any operation that changes the device:

1. ``auth_challenge {}`` -> ``{"purpose", "nonce", "session", "pid", "hostname", "root",
   "expires_in", "required", "operators"}``: a fresh random 256-bit nonce, bound to this session
   (a random session id, this agent's pid, the device's hostname and root). One challenge is
   pending per session; asking again replaces it.
2. The laptop signs, with its operator key (ECDSA P-256, SHA-256, DER, base64), the canonical JSON
   (sorted keys, no whitespace, UTF-8) of::

       {"purpose": "fieldkit-operator-auth/1", "nonce", "session", "pid", "hostname", "root",
        "operator": "SHA256:<fingerprint of the signing key>"}

   with every value as the challenge gave it. ``purpose`` keeps such a signature from meaning
   anything else (journal entries and releases sign other documents).
3. ``auth_response {"nonce", "signature", "public_key": PEM | "fingerprint": str}``: the agent
   takes the pending challenge away (one answer per challenge, right or wrong), rebuilds the
   document from its own values and checks the signature with the key from
   ``etc/fieldkit/operators/*.pem`` (the key the laptop names must be one of them; the key it
   sends is only used to name it). Refusals: ``no_challenge`` (none pending: a replayed answer),
   ``stale_challenge`` (the answer is for another challenge: replayed or another session's),
   ``challenge_expired``, ``no_operators``, ``unknown_operator``, ``bad_signature``,
   ``too_many_attempts`` (8 refusals in one session). Every outcome is journaled on the device
   (``auth.ok``, ``auth.refused``).

Once authenticated, the session stays so while its key is still listed in the operators
directory (checked at every changing operation). Over stdio (SSH, local) nothing is required.
"""

import base64
import binascii
import hmac
import os
import socket
import threading
import time

from fieldkit.agent import anchors, omsverify
from fieldkit.agent.devjournal import canonical
from fieldkit.agent.fields import get_str, shorten
from fieldkit.agent.protocol import RemoteError

PURPOSE = "fieldkit-operator-auth/1"
CHALLENGE_TTL_S = 120.0
MAX_REFUSALS = 8
MAX_SIGNATURE_B64 = 200  # a DER P-256 signature is at most 72 bytes (96 in base64)

# Operations that change the device: over serial they need an authenticated session.
GATED_OPS = frozenset([
    "stage_open", "release_install", "model_activate", "model_smoke", "model_commit", "model_revert",
    "model_remove", "anchors_add", "anchors_remove", "service_restart", "agent_upgrade", "agent_upgrade_confirm",
])
# ``put`` and ``remove`` are allowed without it only inside the bench cache, ``bench`` only with its
# lock there. Everything else (health, identity, ping, stat, hash, journal_read, journal_checkpoint,
# bench_model, models_list, models_verify, anchors_list, agent_upgrade_status, recover) is open: reading, the laptop's
# signed journal checkpoint, and recovery, which only restores the last verified, committed state
# (the same thing every agent start and the boot unit do).
PATH_OPS = frozenset(["put", "remove"])

PROVISION_HINT = ("provision one over SSH: `fieldkit anchors add DEVICE OPERATOR.pub.pem --operator` (the laptop's "
                  "key: `fieldkit init --show-public-key > OPERATOR.pub.pem`), or bake it into the device image "
                  "(`fieldkit agent bundle --operator-key OPERATOR.pub.pem`)")


def signed_document(challenge, operator_fingerprint):
    """The document the operator signs for ``challenge`` (the fields ``auth_challenge`` answered)."""
    doc = dict((k, challenge[k]) for k in ("nonce", "session", "pid", "hostname", "root"))
    doc["purpose"] = PURPOSE
    doc["operator"] = operator_fingerprint
    return doc


def bench_cache_dir(paths):
    """The device's bench cache: ``bench-cache`` beside its models directory (a device path)."""
    models = paths["models"].rstrip("/")
    parent = os.path.dirname(models) or "/"
    return parent.rstrip("/") + "/bench-cache"


class SessionAuth(object):
    """The authentication state of one session (``AgentSession.auth``)."""

    def __init__(self, transport, fs):
        self.transport = transport
        self.required = transport == "serial"
        self.fs = fs
        self.session_id = binascii.hexlify(os.urandom(16)).decode("ascii")
        self.lock = threading.Lock()
        self.pending = None  # {"nonce", "issued"} of the one outstanding challenge
        self.operator = None  # {"fingerprint", "file"} once authenticated
        self.refusals = 0
        self.last_refusal = None

    # ---- the operations -------------------------------------------------------------------------
    def challenge(self, store):
        with self.lock:
            if self.refusals >= MAX_REFUSALS:
                raise RemoteError("too_many_attempts", "%d authentication attempts of this session were refused; "
                                  "reconnect to try again" % self.refusals)
            bound = {"nonce": binascii.hexlify(os.urandom(32)).decode("ascii"), "session": self.session_id,
                     "pid": os.getpid(), "hostname": _hostname(), "root": self.fs.root}
            self.pending = {"nonce": bound["nonce"], "issued": time.monotonic(), "bound": bound}
        keys, _ = anchors.load(self.fs, store.operators_dir)
        out = dict(bound, purpose=PURPOSE, expires_in=CHALLENGE_TTL_S, required=self.required, operators=len(keys))
        return out

    def response(self, store, req):
        args = req.args
        nonce = get_str(args, "nonce", required=True, limit=128)
        sig_b64 = get_str(args, "signature", required=True, limit=MAX_SIGNATURE_B64)
        pem = get_str(args, "public_key", limit=omsverify.MAX_PEM)
        claimed = get_str(args, "fingerprint", limit=100)
        if pem is None and claimed is None:
            raise RemoteError("bad_args", "auth_response needs public_key (PEM) or fingerprint: the operator key")
        with self.lock:
            pending, self.pending = self.pending, None  # one answer per challenge, right or wrong
        try:
            return self._check(store, pending, nonce, sig_b64, pem, claimed)
        except RemoteError as exc:
            if exc.code in ("no_verifier", "io_error", "bad_config"):
                raise
            with self.lock:
                self.operator = None
                self.refusals += 1
                self.last_refusal = "%s: %s" % (exc.code, exc.message)
            store.journal("auth.refused", {"code": exc.code, "reason": shorten(exc.message, 300),
                                           "fingerprint": claimed, "session": self.session_id,
                                           "transport": self.transport})
            raise

    def _check(self, store, pending, nonce, sig_b64, pem, claimed):
        if pending is None:
            raise RemoteError("no_challenge", "no challenge is pending in this session (an answer is good for one "
                                              "challenge only): ask auth_challenge first")
        if not hmac.compare_digest(pending["nonce"].encode("ascii"), nonce.encode("utf-8", "replace")):
            raise RemoteError("stale_challenge", "the answer is for another challenge (replayed, or another "
                                                 "session's): ask auth_challenge again")
        if time.monotonic() - pending["issued"] > CHALLENGE_TTL_S:
            raise RemoteError("challenge_expired", "the challenge expired (%.0f s): ask auth_challenge again"
                              % CHALLENGE_TTL_S)
        if pem is not None:
            fp = omsverify.load_public_pem(pem, "the operator key").fingerprint
            if claimed is not None and claimed != fp:
                raise RemoteError("bad_args", "fingerprint %s is not the fingerprint of the public_key given (%s)"
                                  % (shorten(claimed, 80), fp))
            claimed = fp
        keys, _ = anchors.load(self.fs, store.operators_dir)
        if not keys:
            raise RemoteError("no_operators", "this device has no operator key (%s is empty); %s"
                              % (store.paths["operators"], PROVISION_HINT))
        key = next((k for k in keys if k.fingerprint == claimed), None)
        if key is None:
            raise RemoteError("unknown_operator", "operator key %s is not one this device accepts (%s holds %d: %s)"
                              % (shorten(claimed, 80), store.paths["operators"], len(keys),
                                 ", ".join(k.fingerprint for k in keys[:4])))
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (binascii.Error, ValueError):
            raise RemoteError("bad_signature", "the signature is not base64")
        doc = signed_document(pending["bound"], key.fingerprint)  # the device's own values, never the laptop's
        if not key.verify(sig, canonical(doc)):
            raise RemoteError("bad_signature", "the signature does not verify with operator key %s" % key.fingerprint)
        with self.lock:
            self.operator = {"fingerprint": key.fingerprint, "file": key.file}
        store.journal("auth.ok", {"fingerprint": key.fingerprint, "file": key.file, "session": self.session_id,
                                  "transport": self.transport})
        return {"authenticated": True, "fingerprint": key.fingerprint, "file": key.file, "session": self.session_id}

    # ---- the gate ------------------------------------------------------------------------------
    def check(self, store_fn, op, args):
        """Raise ``not_authenticated`` when ``op`` (with ``args``) changes the device and this
        session may not. ``store_fn`` gives the device's model store (read only when needed)."""
        if not self.required:
            return
        if op in GATED_OPS:
            what = "%s changes the device" % op
        elif op in PATH_OPS or op == "bench":
            key = "lock" if op == "bench" else "path"
            path = args.get(key) if isinstance(args, dict) else None
            if path is None and op == "bench":
                return
            store = store_fn()
            if self._in_bench_cache(store, path):
                return
            what = "%s of %s (outside the bench cache %s) changes the device" % (
                op, shorten(path, 120), bench_cache_dir(store.paths))
        else:
            return
        store = store_fn()
        keys, _ = anchors.load(self.fs, store.operators_dir)
        with self.lock:
            operator = self.operator
            last = self.last_refusal
        if operator is not None:
            if any(k.fingerprint == operator["fingerprint"] for k in keys):
                return
            with self.lock:
                self.operator = None
            raise RemoteError("not_authenticated", "%s, and operator key %s that authenticated this serial session "
                              "is no longer listed in %s; reconnect as another operator"
                              % (what, operator["fingerprint"], store.paths["operators"]))
        if not keys:
            raise RemoteError("not_authenticated", "%s, and over the serial line only an authenticated operator may "
                              "change it: this device has no operator key (%s is empty); %s"
                              % (what, store.paths["operators"], PROVISION_HINT))
        raise RemoteError("not_authenticated", "%s, and this serial session is not authenticated (fieldkit signs the "
                          "device's challenge with the operator key of `fieldkit init` on connect)%s; the device "
                          "accepts %d operator key%s: %s" % (
                              what, "; the last attempt was refused: %s" % shorten(last, 300) if last else "",
                              len(keys), "" if len(keys) == 1 else "s", ", ".join(k.fingerprint for k in keys[:4])))

    def _in_bench_cache(self, store, path):
        if not isinstance(path, str):
            return False
        try:
            full = self.fs.resolve(path)
            cache = self.fs.resolve(bench_cache_dir(store.paths))
        except RemoteError:
            return False
        if not full.startswith(cache.rstrip("/") + "/"):
            return False
        if os.path.islink(cache):
            return False
        real_cache = os.path.realpath(cache)
        real_parent = os.path.realpath(os.path.dirname(full))
        return real_parent == real_cache or real_parent.startswith(real_cache.rstrip("/") + "/")


def _hostname():
    try:
        return socket.gethostname()[:255]
    except OSError:
        return ""
