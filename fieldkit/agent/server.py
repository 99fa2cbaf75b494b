"""The agent's request loop (stdlib only, Python 3.9 syntax).

One :class:`AgentSession` serves one laptop connection over a stream. The reader thread handles
control messages and incoming data inline (so an upload is written to disk as it arrives, with
natural back-pressure); every other request runs in a thread of its own and can be cancelled.
"""

import atexit
import collections
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback

from fieldkit.agent import AGENT_VERSION, PROTOCOL_VERSION, devjournal, probes
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
            "journal_read": self.op_journal_read,
            "journal_checkpoint": self.op_journal_checkpoint,
            "bench": self.op_bench,
            "bench_model": self.op_bench_model,
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

    # ---- device journal (fieldkit.agent.devjournal) ------------------------------------------------
    def op_journal_read(self, req):
        return devjournal.read_op(self.resolve(req.args.get("path") or DEFAULT_PATHS["journal"]), req.args)

    def op_journal_checkpoint(self, req):
        return devjournal.checkpoint_op(self.resolve(req.args.get("path") or DEFAULT_PATHS["journal"]), req.args)

    # ---- inference benchmark -------------------------------------------------------------------
    def op_bench(self, req):
        """Run ``fieldkit-agent bench`` as a process of its own and relay its JSON lines.

        ``started`` and ``progress`` lines become request events; the ``result`` line is the
        answer; an ``error`` line becomes an error with the benchmark's own code and message.
        The benchmark runs in a new session (its own process group), so cancelling the request
        or losing the laptop ends that whole group: nothing is left running on the device.
        """
        args = req.args
        model = self.resolve(args.get("model"))
        argv = ["--model", model] + _bench_options(args, self.resolve)
        lock = _BenchLock(self.resolve(args["lock"]) if args.get("lock") else None)
        lock.acquire()
        try:
            run = BenchProcess(_bench_command() + argv, cwd=self.root)
            try:
                return run.relay(req, args.get("expect_sha256"))
            finally:
                run.stop()
        finally:
            lock.release()

    def op_bench_model(self, req):
        """Find the .onnx file of an installed model: ``NAME/current`` or ``NAME/VERSION`` under
        ``models_dir``; the single .onnx file there, or the one ``release.json`` names as
        ``model_file``."""
        args = req.args
        name = args.get("name")
        version = args.get("version")
        for label, value in (("model name", name), ("version", version)):
            if value is None and label == "version":
                continue
            if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
                raise RemoteError("bad_args", "invalid %s %r" % (label, value))
        models_dir = args.get("models_dir") or DEFAULT_PATHS["models"]
        base = self.resolve(models_dir)
        top = os.path.join(base, name)
        if not os.path.isdir(top):
            installed = _listdir(base, dirs=True)
            raise RemoteError("model_not_installed", "no model %s is installed on the device under %s (installed: %s)"
                              % (name, models_dir, ", ".join(installed) or "none"))
        versions = [v for v in _listdir(top, dirs=True) if v not in ("current", "previous")]
        where = os.path.join(top, version or "current")
        if not os.path.isdir(where):
            if version:
                raise RemoteError("version_not_installed", "model %s has no version %s on the device (versions: %s)"
                                  % (name, version, ", ".join(versions) or "none"))
            raise RemoteError("no_current_version", "model %s has no current version on the device (versions: %s); "
                              "give one as installed:%s@VERSION" % (name, ", ".join(versions) or "none", name))
        real = os.path.realpath(where)
        if real != self.root and not real.startswith(self.root.rstrip("/") + "/"):
            raise RemoteError("bad_path", "%s/%s points outside the device root" % (name, version or "current"))
        release = {}
        rel_path = os.path.join(real, "release.json")
        if os.path.exists(rel_path):
            try:
                with open(rel_path, "r") as fh:
                    release = json.load(fh)
            except (OSError, ValueError) as exc:
                raise RemoteError("bad_release", "release.json of %s is unreadable: %s" % (name, exc))
            if not isinstance(release, dict):
                raise RemoteError("bad_release", "release.json of %s is not a JSON object" % name)
        model_file = release.get("model_file")
        if model_file:
            if not isinstance(model_file, str) or "/" in model_file or model_file in (".", ".."):
                raise RemoteError("bad_release", "release.json of %s names an invalid model_file %r" % (name, model_file))
            path = os.path.join(real, model_file)
            if not os.path.isfile(path):
                raise RemoteError("model_not_found", "release.json of %s names %s, which is not in %s"
                                  % (name, model_file, self._device_path(real)))
        else:
            onnx = [f for f in _listdir(real) if f.endswith(".onnx")]
            if len(onnx) != 1:
                raise RemoteError("model_not_found", "%s holds %s .onnx files%s; name one as model_file in release.json"
                                  % (self._device_path(real), len(onnx) or "no",
                                     (" (" + ", ".join(onnx) + ")") if onnx else ""))
            path = os.path.join(real, onnx[0])
        return {
            "name": name,
            "version": release.get("version") or os.path.basename(real),
            "dir": self._device_path(real),
            "path": self._device_path(path),
            "size": os.path.getsize(path),
            "release": {k: release[k] for k in ("name", "version", "description", "model_file", "inputs")
                        if k in release},
        }

    def _device_path(self, full):
        rel = os.path.relpath(full, self.root)
        return "/" if rel == "." else "/" + rel


def _listdir(path, dirs=False):
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return []
    if dirs:
        return [n for n in names if os.path.isdir(os.path.join(path, n)) and not n.startswith(".")]
    return [n for n in names if os.path.isfile(os.path.join(path, n))]


def _bench_command():
    """How to start this very agent's ``bench`` command: ``python agent.pyz bench`` when the agent
    runs from its zipapp, else ``python -m fieldkit.agent bench`` with the package on PYTHONPATH."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../fieldkit
    entry = os.path.dirname(package)  # the sys.path entry that holds fieldkit: a dir or the .pyz
    if os.path.isfile(entry):
        return [sys.executable, entry, "bench"]
    return [sys.executable, "-m", "fieldkit.agent", "bench"]


def _bench_env():
    env = dict(os.environ)
    entry = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isdir(entry):
        env["PYTHONPATH"] = entry + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONSTARTUP", None)
    return env


def _bench_options(args, resolve):
    """The benchmark's command line from the request's arguments (every value checked)."""
    out = []

    def num(key, kind, flag):
        value = args.get(key)
        if value is None:
            return
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise RemoteError("bad_args", "%s must be a number, got %r" % (key, value))
        out.extend([flag, repr(value) if kind is float else str(value)])

    num("warmup", int, "--warmup")
    if args.get("runs") is not None:
        num("runs", int, "--runs")
    else:
        num("duration_s", float, "--duration")
        num("min_runs", int, "--min-runs")
    num("max_seconds", float, "--max-seconds")
    num("threads", int, "--threads")
    num("rate_hz", float, "--rate")
    num("seed", int, "--seed")
    num("progress_interval_s", float, "--progress-interval")
    spin = args.get("spin")
    if spin is not None:
        if spin not in ("on", "off"):
            raise RemoteError("bad_args", "spin must be on or off, got %r" % (spin,))
        out.extend(["--spin", spin])
    for p in args.get("providers") or []:
        if not isinstance(p, str) or not p:
            raise RemoteError("bad_args", "invalid provider %r" % (p,))
        out.extend(["--provider", p])
    shapes = args.get("shapes") or {}
    if not isinstance(shapes, dict):
        raise RemoteError("bad_args", "shapes must map input names to dimensions")
    for name, dims in sorted(shapes.items()):
        try:
            text = "x".join(str(int(d)) for d in dims)
        except (TypeError, ValueError):
            raise RemoteError("bad_args", "shape of %r must be a list of whole numbers" % (name,))
        out.extend(["--shape", "%s=%s" % (name, text)])
    if args.get("inputs"):
        out.extend(["--inputs", resolve(args["inputs"])])
    return out


# Benchmark process groups still running, ended when the agent exits (SIGTERM under --serial).
_RUNNING = set()
_RUNNING_LOCK = threading.Lock()


def _kill_leftovers():
    with _RUNNING_LOCK:
        groups = list(_RUNNING)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


atexit.register(_kill_leftovers)


class _BenchLock(object):
    """One benchmark at a time per device: two at once would measure each other."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def acquire(self):
        if not self.path:
            return
        try:
            import fcntl
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except (ImportError, OSError):
            return  # no lock possible (read-only dir): run unguarded rather than refuse
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            raise RemoteError("busy", "another benchmark is already running on this device%s; wait for it to "
                              "finish or cancel it, since two at once would measure each other"
                              % ((" (pid %s)" % holder) if holder else ""))
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def _signal_name(returncode):
    try:
        return signal.Signals(-returncode).name
    except (ValueError, AttributeError):
        return "signal %d" % -returncode


class BenchProcess(object):
    """The benchmark child: its own session and process group, stdout read as JSON lines."""

    STOP_GRACE_S = 5.0

    def __init__(self, cmd, cwd):
        self.cmd = cmd
        self.stderr_tail = collections.deque(maxlen=40)
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd=cwd, env=_bench_env(),
                                         close_fds=True, start_new_session=True)
        except OSError as exc:
            raise RemoteError("bench_start_failed", "could not start the benchmark process (%s): %s" % (cmd[0], exc))
        self.pgid = self.proc.pid  # start_new_session: the child leads its own group
        with _RUNNING_LOCK:
            _RUNNING.add(self.pgid)
        self._err = threading.Thread(target=self._drain_stderr, name="bench-stderr", daemon=True)
        self._err.start()
        self.killed_by_us = False

    def _drain_stderr(self):
        try:
            for line in iter(self.proc.stderr.readline, b""):
                self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())
        except (OSError, ValueError):
            pass

    def _lines(self, should_stop):
        """Yield stdout lines; calls ``should_stop()`` about every 50 ms while waiting."""
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            should_stop()
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
            except (OSError, ValueError):
                ready = [fd]
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                if buf.strip():
                    yield buf
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield line

    def relay(self, req, expect_sha256=None):
        result = error = started = None
        cancelled = []  # [time of the cancel]

        def should_stop():
            if req.cancel.is_set() and not cancelled:
                cancelled.append(time.monotonic())
                self.terminate()
            elif cancelled and time.monotonic() - cancelled[0] > self.STOP_GRACE_S:
                self.kill()  # did not stop on SIGTERM: the pipe closes when the group is gone

        for line in self._lines(should_stop):
            try:
                event = json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                self.stderr_tail.append(line.decode("utf-8", "replace")[:300])
                continue
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == "started":
                started = event
                got = (event.get("model") or {}).get("sha256")
                if expect_sha256 and got and got != expect_sha256:
                    self.terminate()
                    self.wait()
                    raise RemoteError("digest_mismatch", "the model file on the device has sha256 %s, expected %s: "
                                      "the copy is damaged" % (got, expect_sha256))
            if kind in ("started", "progress") and not cancelled:
                try:
                    req.progress(**event)
                except StreamClosed:
                    should_stop()  # laptop gone: session close sets cancel too
            elif kind == "result":
                result = event
            elif kind == "error":
                error = event
        rc = self.wait()
        if cancelled:
            runs = (error or {}).get("runs")
            gone = self.group_gone()
            raise RemoteError("cancelled", "benchmark stopped on the device%s; its process (pid %d) has ended%s" % (
                "" if runs is None else " after %d timed runs" % runs, self.proc.pid,
                " and nothing was left running" if gone else ", but its process group is still alive"))
        if result is not None and rc == 0:
            if started is not None:
                result["started"] = {k: v for k, v in started.items() if k not in ("event", "model", "settings")}
                result["started"]["settings"] = started.get("settings")
            return result
        if error is not None:
            raise RemoteError(str(error.get("code") or "bench_failed"), str(error.get("message") or "benchmark failed"))
        tail = [t for t in self.stderr_tail if t.strip()]
        if rc is not None and rc < 0:
            why = "was killed by %s" % _signal_name(rc)
            if rc == -signal.SIGKILL:
                why += " (often the kernel's out-of-memory killer: check free memory and dmesg)"
        else:
            why = "exited with status %s without a result" % rc
        raise RemoteError("bench_crashed", "the benchmark process %s%s" % (why, (": " + tail[-1][:300]) if tail else ""))

    def terminate(self):
        self.killed_by_us = True
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except OSError:
            pass

    def kill(self):
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except OSError:
            pass

    def wait(self):
        try:
            return self.proc.wait(timeout=self.STOP_GRACE_S if self.killed_by_us else 30)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait(timeout=10)

    def group_gone(self):
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return True
        return False

    def stop(self):
        """End the benchmark's whole process group (idempotent); waits for the child."""
        try:
            if self.proc.poll() is None:
                self.terminate()
                self.wait()
            if not self.group_gone():
                self.kill()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(self.pgid)
            self._err.join(2.0)
            for f in (self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
