"""The agent's request loop (stdlib only, Python 3.9 syntax).

One :class:`AgentSession` serves one laptop connection over a stream. The reader thread handles
control messages and incoming data inline (so an upload is written to disk as it arrives, with
natural back-pressure); every other request runs in a thread of its own and can be cancelled.
"""

import hashlib
import os
import sys
import threading
import time
import traceback

from fieldkit.agent import AGENT_VERSION, PROTOCOL_VERSION, probes
from fieldkit.agent.protocol import (
    DATA_CHUNK, FrameReader, FrameWriter, ProtocolError, RemoteError, StreamClosed,
)

DEFAULT_PATHS = {
    "models": "/var/lib/fieldkit/models",
    "staging": "/var/lib/fieldkit/staging",
    "trust": "/etc/fieldkit/trust",
    "journal": "/var/lib/fieldkit/journal.jsonl",
}


def log(msg):
    sys.stderr.write("fieldkit-agent: %s\n" % msg)
    sys.stderr.flush()


class Request(object):
    """What a handler sees: arguments, a cancel event, and ways to talk back."""

    def __init__(self, session, rid, op, args, body):
        self.session = session
        self.id = rid
        self.op = op
        self.args = args or {}
        self.body = body
        self.cancel = threading.Event()
        self.done = threading.Event()

    def progress(self, **data):
        self.session.send({"t": "evt", "id": self.id, "data": data})

    def send_data(self, offset, chunk, eof=False):
        self.session.send({"t": "data", "id": self.id, "off": offset, "eof": eof}, chunk)

    def check_cancel(self):
        if self.cancel.is_set():
            raise RemoteError("cancelled", "cancelled by the operator")


class Upload(object):
    """An incoming file, written to ``dest + '.part'`` as data arrives; resumable by offset."""

    def __init__(self, session, req):
        args = req.args
        self.req = req
        self.path = session.resolve(args["path"])
        self.part = self.path + ".part"
        self.size = int(args["size"])
        self.expect_sha256 = args.get("sha256")
        offset = int(args.get("offset", 0))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        have = os.path.getsize(self.part) if os.path.exists(self.part) else 0
        if offset > have:
            raise RemoteError("bad_offset", "resume offset %d is past the %d bytes already staged" % (offset, have))
        self.hash = hashlib.sha256()
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o600)
        self.fh = os.fdopen(fd, "r+b")
        if offset:
            self.fh.seek(0)
            remaining = offset
            while remaining:
                block = self.fh.read(min(1 << 20, remaining))
                if not block:
                    break
                self.hash.update(block)
                remaining -= len(block)
        self.fh.seek(offset)
        self.fh.truncate(offset)
        self.offset = offset

    def data(self, off, body, eof):
        if off != self.offset:
            raise RemoteError("bad_offset", "data at offset %d, expected %d" % (off, self.offset))
        if self.offset + len(body) > self.size:
            raise RemoteError("too_large", "more data than the announced %d bytes" % self.size)
        try:
            self.fh.write(body)
        except OSError as exc:
            raise RemoteError("io_error", "writing %s failed: %s" % (self.part, exc))
        self.hash.update(body)
        self.offset += len(body)
        return eof

    def finish(self):
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if self.offset != self.size:
            raise RemoteError("short", "received %d of %d bytes" % (self.offset, self.size))
        digest = self.hash.hexdigest()
        if self.expect_sha256 and digest != self.expect_sha256:
            os.unlink(self.part)
            raise RemoteError("digest_mismatch", "sha256 of the received file is %s, expected %s" % (digest, self.expect_sha256))
        os.replace(self.part, self.path)
        dfd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return {"path": self.req.args["path"], "size": self.size, "sha256": digest}

    def abort(self):
        try:
            self.fh.close()
        except OSError:
            pass


class AgentSession(object):
    def __init__(self, stream, root="/", heartbeat_s=1.0, idle_timeout_s=20.0):
        self.stream = stream
        self.root = os.path.abspath(root)
        self.reader = FrameReader(stream)
        self.writer = FrameWriter(stream)
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = idle_timeout_s
        self.requests = {}
        self.uploads = {}
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.last_rx = time.monotonic()
        self.rejected = 0
        self.ops = {
            "ping": self.op_ping,
            "health": self.op_health,
            "stat": self.op_stat,
            "hash": self.op_hash,
            "remove": self.op_remove,
            "sleep": self.op_sleep,
        }

    # ---- plumbing -------------------------------------------------------------------------
    def send(self, header, body=b""):
        if self.closed.is_set():
            raise StreamClosed("session closed")
        try:
            self.writer.send(header, body)
        except (OSError, StreamClosed):
            self.closed.set()
            raise StreamClosed("link to the laptop lost")

    def resolve(self, rel):
        """Map a device path (absolute on the device) under the agent's root, refusing escapes."""
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise RemoteError("bad_path", "invalid path %r" % (rel,))
        full = os.path.normpath(os.path.join(self.root, rel.lstrip("/")))
        if full != self.root and not full.startswith(self.root.rstrip("/") + "/"):
            raise RemoteError("bad_path", "path %s leaves the device root" % rel)
        return full

    def hello(self):
        return {
            "t": "hello",
            "proto": PROTOCOL_VERSION,
            "agent_version": AGENT_VERSION,
            "python": sys.version.split()[0],
            "capabilities": probes.module_versions(),
            "ops": sorted(list(self.ops) + ["put"]),
            "root": self.root,
            "pid": os.getpid(),
            "max_frame": self.reader.max_frame,
        }

    def _heartbeat_loop(self):
        while not self.closed.wait(self.heartbeat_s):
            if time.monotonic() - self.last_rx > self.idle_timeout_s:
                log("no message from the laptop for %.0f s; ending the session" % self.idle_timeout_s)
                self.close()
                return
            try:
                self.writer.try_send({"t": "hb", "ts": time.time()})
            except (OSError, StreamClosed, ProtocolError):
                self.close()
                return

    def close(self):
        if self.closed.is_set():
            return
        self.closed.set()
        with self.lock:
            reqs = list(self.requests.values())
            ups = list(self.uploads.values())
            self.uploads.clear()
        for req in reqs:
            req.cancel.set()
        for up in ups:
            up.abort()
        try:
            self.stream.close()
        except Exception:
            pass

    # ---- main loop -------------------------------------------------------------------------
    def serve(self):
        hb = threading.Thread(target=self._heartbeat_loop, name="agent-heartbeat", daemon=True)
        hb.start()
        try:
            while not self.closed.is_set():
                try:
                    msg = self.reader.read_message()
                except ProtocolError as exc:
                    self.rejected += 1
                    log("rejected a frame: %s" % exc)
                    continue
                self.last_rx = time.monotonic()
                self.dispatch(msg)
        except (StreamClosed, OSError):
            pass
        finally:
            self.close()
            for req in list(self.requests.values()):
                req.done.wait(5)

    def dispatch(self, msg):
        t = msg.type
        h = msg.header
        if t == "req":
            self.start_request(h.get("id"), h.get("op"), h.get("args"), msg.body)
        elif t == "data":
            self.on_data(h.get("id"), h.get("off", 0), msg.body, bool(h.get("eof")))
        elif t == "cancel":
            with self.lock:
                req = self.requests.get(h.get("id"))
                up = self.uploads.pop(h.get("id"), None)
            if req:
                req.cancel.set()
            if up:
                up.abort()
                self.reply_error(h.get("id"), "cancelled", "upload cancelled at %d of %d bytes; run again to resume" % (up.offset, up.size), {"offset": up.offset})
        elif t == "hello":
            self.send(self.hello())
        elif t == "hb":
            pass
        else:
            self.rejected += 1
            log("unknown message type %r" % t)

    def reply(self, rid, result):
        self.send({"t": "res", "id": rid, "ok": True, "result": result})

    def reply_error(self, rid, code, message, detail=None):
        err = {"code": code, "message": message}
        if detail:
            err["detail"] = detail
        self.send({"t": "res", "id": rid, "ok": False, "error": err})

    def start_request(self, rid, op, args, body):
        if not isinstance(rid, int):
            self.rejected += 1
            return
        if op == "put":
            try:
                up = Upload(self, Request(self, rid, op, args, body))
            except RemoteError as exc:
                self.reply_error(rid, exc.code, exc.message)
                return
            except (KeyError, ValueError, TypeError) as exc:
                self.reply_error(rid, "bad_args", "put needs path and size: %s" % exc)
                return
            except OSError as exc:
                self.reply_error(rid, "io_error", str(exc))
                return
            with self.lock:
                self.uploads[rid] = up
            if up.size == 0:
                self.on_data(rid, 0, b"", True)
            return
        handler = self.ops.get(op)
        if handler is None:
            self.reply_error(rid, "unknown_op", "this agent (version %s) has no operation %r" % (AGENT_VERSION, op))
            return
        req = Request(self, rid, op, args, body)
        with self.lock:
            self.requests[rid] = req
        threading.Thread(target=self.run_request, args=(req, handler), name="agent-op-%s" % op, daemon=True).start()

    def run_request(self, req, handler):
        try:
            result = handler(req)
            self.reply(req.id, result)
        except RemoteError as exc:
            self._safe_error(req.id, exc.code, exc.message)
        except StreamClosed:
            pass
        except Exception as exc:
            log("operation %s failed:\n%s" % (req.op, traceback.format_exc()))
            self._safe_error(req.id, "internal", "%s failed on the device: %s: %s" % (req.op, type(exc).__name__, exc))
        finally:
            with self.lock:
                self.requests.pop(req.id, None)
            req.done.set()

    def _safe_error(self, rid, code, message):
        try:
            self.reply_error(rid, code, message)
        except StreamClosed:
            pass

    def on_data(self, rid, off, body, eof):
        up = self.uploads.get(rid)
        if up is None:
            return  # late data for a cancelled or failed upload
        try:
            if up.data(off, body, eof):
                with self.lock:
                    self.uploads.pop(rid, None)
                self.reply(rid, up.finish())
        except RemoteError as exc:
            with self.lock:
                self.uploads.pop(rid, None)
            up.abort()
            self.reply_error(rid, exc.code, exc.message, {"offset": up.offset})
        except OSError as exc:
            with self.lock:
                self.uploads.pop(rid, None)
            up.abort()
            self.reply_error(rid, "io_error", "%s: %s" % (up.part, exc), {"offset": up.offset})

    # ---- operations ------------------------------------------------------------------------
    def op_ping(self, req):
        return {"time": time.time()}

    def op_sleep(self, req):
        """Wait (cancellable) — used to test cancellation and dead-peer handling."""
        deadline = time.monotonic() + float(req.args.get("seconds", 1))
        while time.monotonic() < deadline:
            if req.cancel.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                raise RemoteError("cancelled", "cancelled by the operator")
        return {"slept": True}

    def op_health(self, req):
        paths = dict(DEFAULT_PATHS)
        paths.update(req.args.get("paths") or {})
        disk_paths = [("root", "/"), ("models", paths["models"])]
        for label, p in (req.args.get("extra_disks") or {}).items():
            disk_paths.append((label, p))
        return probes.health(self.root, disk_paths, req.args.get("service_unit"),
                             float(req.args.get("sample_s", 0.25)))

    def op_stat(self, req):
        path = self.resolve(req.args["path"])
        out = {"path": req.args["path"], "exists": os.path.exists(path)}
        if out["exists"]:
            out["size"] = os.path.getsize(path)
        part = path + ".part"
        out["partial_size"] = os.path.getsize(part) if os.path.exists(part) else 0
        return out

    def op_hash(self, req):
        path = self.resolve(req.args["path"])
        h = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as fh:
                while True:
                    req.check_cancel()
                    block = fh.read(DATA_CHUNK * 4)
                    if not block:
                        break
                    h.update(block)
                    size += len(block)
        except FileNotFoundError:
            raise RemoteError("not_found", "%s does not exist on the device" % req.args["path"])
        return {"path": req.args["path"], "sha256": h.hexdigest(), "size": size}

    def op_remove(self, req):
        path = self.resolve(req.args["path"])
        removed = []
        for p in (path, path + ".part"):
            if os.path.isfile(p):
                os.unlink(p)
                removed.append(p[len(self.root):] or "/")
        return {"removed": removed}
