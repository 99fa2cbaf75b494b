"""The agent's request loop (stdlib only, Python 3.6 syntax).

One :class:`AgentSession` serves one laptop connection over a stream. The reader thread checks
every message before it uses any field of it (:mod:`fieldkit.agent.fields`): a message it cannot
use is answered with a coded error when it carries a usable id (``bad_request``, ``bad_args``,
``busy``, ...) and otherwise counted as rejected; no message ends the session, except a frame
length that puts the stream out of step (:class:`~fieldkit.agent.protocol.StreamOutOfStep`),
which ends this session cleanly.

The reader thread answers ``ping`` and handles control messages (``hello``, ``cancel``, ``hb``)
and incoming upload data inline (so an upload is written to disk as it arrives, with natural
back-pressure). Every other request runs in a thread of its own and can be cancelled; at most
``max_in_flight`` requests (uploads included) run at once per session, and the rest are answered
at once with ``busy``. So ``ping`` is answered promptly even during a flood of requests.

Operations live in modules of their own: :mod:`.files` (put, stat, hash, remove and the rules
for device paths), :mod:`.models` (the model store and its layout), :mod:`.anchors` (trusted
release keys), :mod:`.staging` (stage and install a signed release, checked by
:mod:`.omsverify` and :mod:`.releasefmt`), :mod:`.activation` (activate, commit, revert,
recover), :mod:`.smoke` (the smoke test process), :mod:`.storeops` (list, verify, remove),
:mod:`.benchproc` (the benchmark process), :mod:`.devjournal` (the device's journal),
:mod:`.probes` (health readings).
"""

import os
import re
import sys
import threading
import time
import traceback

from fieldkit.agent import (
    AGENT_VERSION, PROTOCOL_VERSION, activation, anchors, devjournal, operators, probes, staging, storeops, upgrade,
)
from fieldkit.agent.benchproc import bench_op
from fieldkit.agent.fields import (
    MAX_OP, MAX_TEXT, get_dict, get_float, get_str, is_int, shorten, valid_id,
)
from fieldkit.agent.files import DeviceRoot, Upload, hash_op, remove_op, stat_op
from fieldkit.agent.fixedreadings import fixed_readings
from fieldkit.agent.identity import identity_op
from fieldkit.agent.log import log
from fieldkit.agent.models import DEFAULT_PATHS, ModelStore
from fieldkit.agent.protocol import (
    FrameReader, FrameWriter, ProtocolError, RemoteError, StreamClosed, StreamOutOfStep,
)

MAX_IN_FLIGHT = 16  # requests running at once per session (uploads included)
MAX_SLEEP_S = 3600.0
MAX_SAMPLE_S = 5.0
MAX_EXTRA_DISKS = 32
_UNIT = re.compile(r"^[A-Za-z0-9@_.:\\-]{1,256}$")



class Request(object):
    """What a handler sees: checked arguments (a dict), a cancel event, and ways to talk back."""

    def __init__(self, session, rid, op, args, body):
        self.session = session
        self.id = rid
        self.op = op
        self.args = args
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


class AgentSession(object):
    """One laptop connection. ``transport`` is how it came: ``"stdio"`` (SSH, local: the operator is
    already authenticated) or ``"serial"`` (``serve --serial``: changing operations need the session
    authenticated first, :mod:`.operators`)."""

    def __init__(self, stream, root="/", heartbeat_s=1.0, idle_timeout_s=20.0, max_in_flight=MAX_IN_FLIGHT,
                 transport="stdio"):
        self.stream = stream
        self.fs = DeviceRoot(root)
        self.root = self.fs.root
        self.transport = transport
        self.auth = operators.SessionAuth(transport, self.fs)
        self.reader = FrameReader(stream)
        self.writer = FrameWriter(stream)
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = idle_timeout_s
        self.max_in_flight = max_in_flight
        self.requests = {}
        self.uploads = {}
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.last_rx = time.monotonic()
        self.rejected = 0  # messages that could not be used at all
        self.internal_errors = 0  # bugs caught by the last-resort guard
        self.out_of_step = False
        self._log_window = [0.0, 0, 0]  # start, lines logged in it, lines suppressed
        self.inline = {"ping": self.op_ping}
        self.ops = {
            "health": self.op_health,
            "identity": identity_op,  # read-only (fieldkit.agent.identity): never gated
            "stat": lambda req: stat_op(self.fs, req),
            "hash": lambda req: hash_op(self.fs, req),
            "remove": lambda req: remove_op(self.fs, req),
            "sleep": self.op_sleep,
            "journal_read": self.op_journal_read,
            "journal_checkpoint": self.op_journal_checkpoint,
            "bench": lambda req: bench_op(self.fs, req),
            "bench_model": self.op_bench_model,
            # signed releases (docs/releases.md): the model store owns the layout
            "anchors_list": lambda req: anchors.store_list_op(self.store(), req),
            "anchors_add": lambda req: anchors.store_add_op(self.store(), req),
            "anchors_remove": lambda req: anchors.store_remove_op(self.store(), req),
            # operator authentication (serial): operators.py
            "auth_challenge": lambda req: self.auth.challenge(self.store()),
            "auth_response": lambda req: self.auth.response(self.store(), req),
            "stage_open": lambda req: staging.stage_open(self.store(), req),
            "release_install": lambda req: staging.release_install(self.store(), req, self.model_locks),
            "model_activate": lambda req: activation.activate(self.store(), req, self.model_locks),
            "model_smoke": self.op_model_smoke,
            "model_commit": lambda req: activation.commit(self.store(), req, self.model_locks),
            "model_revert": lambda req: activation.revert(self.store(), req, self.model_locks),
            "service_restart": lambda req: activation.restart_op(self.store(), req),
            "models_list": lambda req: storeops.list_op(self.store(), req),
            "models_verify": lambda req: storeops.verify_op(self.store(), req),
            "model_remove": lambda req: storeops.remove_op(self.store(), req, self.model_locks),
            "recover": lambda req: {"recovered": activation.recover(self.store(), self.model_locks)},
            # the installed agent replacing itself (fieldkit agent upgrade): upgrade.py
            "agent_upgrade_status": lambda req: upgrade.status_op(self, req),
            "agent_upgrade": lambda req: upgrade.upgrade_op(self, req),
            "agent_upgrade_confirm": lambda req: upgrade.confirm_op(self, req),
        }
        self.model_locks = activation.SessionLocks()

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
        """Map a device path (absolute on the device) under the agent's root (see :mod:`.files`)."""
        return self.fs.resolve(rel)

    def hello(self):
        return {
            "t": "hello",
            "proto": PROTOCOL_VERSION,
            "agent_version": AGENT_VERSION,
            "python": sys.version.split()[0],
            "capabilities": probes.module_versions(),
            "ops": sorted(list(self.ops) + list(self.inline) + ["put"]),
            "root": self.root,
            "pid": os.getpid(),
            "transport": self.transport,
            "auth_required": self.auth.required,
            "max_frame": self.reader.max_frame,
            "max_in_flight": self.max_in_flight,
            "put_progress": True,  # a put's data is acknowledged with {"received": bytes} events
        }

    def note(self, msg):
        """Log a rejected message, at most 5 lines a second (a flood must not fill stderr)."""
        now = time.monotonic()
        window = self._log_window
        if now - window[0] >= 1.0:
            if window[2]:
                log("(%d more rejected messages not shown)" % window[2])
            window[:] = [now, 0, 0]
        if window[1] < 5:
            window[1] += 1
            log(msg)
        else:
            window[2] += 1

    def reject(self, msg):
        self.rejected += 1
        self.note("rejected a message: %s" % msg)

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
                except StreamOutOfStep as exc:
                    self.rejected += 1
                    self.out_of_step = True
                    log("%s; ending the session" % exc)
                    break
                except ProtocolError as exc:
                    self.reject(str(exc))
                    continue
                self.last_rx = time.monotonic()
                try:
                    self.dispatch(msg)
                except StreamClosed:
                    raise
                except Exception:  # last resort: a bug must not end the session
                    self.rejected += 1
                    self.internal_errors += 1
                    log("internal error handling a message (%s):\n%s" % (shorten(repr(msg), 300),
                                                                      traceback.format_exc()))
        except (StreamClosed, OSError):
            pass
        finally:
            self.close()
            deadline = time.monotonic() + 5.0
            for req in list(self.requests.values()):
                req.done.wait(max(0.0, deadline - time.monotonic()))
            self.end_activations()

    def end_activations(self):
        """Revert any activation this session left pending (never committed) and free its locks."""
        if not self.model_locks.names():
            return
        try:
            activation.end_session(self.store(), self.model_locks, log)
        except Exception:  # last resort: the locks go with the process anyway
            log("ending the session's activations failed:\n%s" % traceback.format_exc())

    def dispatch(self, msg):
        t = msg.type
        h = msg.header
        if t == "req":
            self.on_request(h, msg.body)
        elif t == "data":
            self.on_data_message(h, msg.body)
        elif t == "cancel":
            self.on_cancel(h)
        elif t == "hello":
            self.send(self.hello())
        elif t == "hb":
            pass
        else:
            self.reject("unknown message type %s" % shorten(t, 40))

    def reply(self, rid, result):
        try:
            self.send({"t": "res", "id": rid, "ok": True, "result": result})
        except (ProtocolError, ValueError, TypeError) as exc:  # the answer does not fit in a header
            self.reply_error(rid, "too_large", "the device's answer cannot be sent: %s" % exc)

    def reply_error(self, rid, code, message, detail=None):
        err = {"code": shorten(str(code), 64), "message": shorten(str(message), MAX_TEXT)}
        if detail:
            err["detail"] = detail
        try:
            self.send({"t": "res", "id": rid, "ok": False, "error": err})
        except (ProtocolError, ValueError, TypeError):
            err.pop("detail", None)
            self.send({"t": "res", "id": rid, "ok": False, "error": err})

    def _safe_error(self, rid, code, message, detail=None):
        try:
            self.reply_error(rid, code, message, detail)
        except StreamClosed:
            pass

    # ---- requests --------------------------------------------------------------------------
    def on_request(self, h, body):
        rid = h.get("id")
        if not valid_id(rid):
            self.reject("a request without a usable id (id %s)" % shorten(rid, 40))
            return
        op = h.get("op")
        if not isinstance(op, str) or not op or len(op) > MAX_OP:
            self.reply_error(rid, "bad_request", "op must be an operation name, got %s" % shorten(op, 80))
            return
        args = h.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            self.reply_error(rid, "bad_args", "args of %s must be an object, got %s" % (op, type(args).__name__))
            return
        try:
            self.auth.check(self.store, op, args)  # over serial: may this session change the device?
        except RemoteError as exc:
            if exc.code == "not_authenticated":
                self.note("refused %s: the serial session is not authenticated" % shorten(op, 80))
            self.reply_error(rid, exc.code, exc.message)
            return
        except OSError as exc:
            self.reply_error(rid, "io_error", "%s: cannot check the session's authentication: %s"
                             % (shorten(op, 80), exc.strerror or exc))
            return
        req = Request(self, rid, op, args, body)
        inline = self.inline.get(op)
        if inline is not None:
            try:
                self.reply(rid, inline(req))
            except RemoteError as exc:
                self.reply_error(rid, exc.code, exc.message)
            return
        handler = self.ops.get(op)
        if handler is None and op != "put":
            self.reply_error(rid, "unknown_op", "this agent (version %s) has no operation %s"
                             % (AGENT_VERSION, shorten(repr(op), 80)))
            return
        with self.lock:
            if rid in self.requests or rid in self.uploads:
                problem = ("bad_request", "request id %d is already in use by a running request" % rid)
            elif len(self.requests) + len(self.uploads) >= self.max_in_flight:
                problem = ("busy", "the device is already running %d requests of this session; try again when "
                           "one has finished" % self.max_in_flight)
            else:
                problem = None
                if handler is not None:
                    self.requests[rid] = req
        if problem is not None:
            self.reply_error(rid, problem[0], problem[1])
            return
        if handler is None:
            self.start_upload(req)
            return
        try:
            threading.Thread(target=self.run_request, args=(req, handler), name="agent-op-%s" % op,
                             daemon=True).start()
        except RuntimeError as exc:  # can't start new thread
            with self.lock:
                self.requests.pop(rid, None)
            self.reply_error(rid, "busy", "the device cannot start another thread now: %s" % exc)

    def run_request(self, req, handler):
        try:
            result = handler(req)
            self.reply(req.id, result)
        except RemoteError as exc:
            self._safe_error(req.id, exc.code, exc.message)
        except StreamClosed:
            pass
        except OSError as exc:
            self._safe_error(req.id, "io_error", "%s failed on the device: %s" % (req.op, exc.strerror or exc))
        except Exception as exc:
            log("operation %s failed:\n%s" % (req.op, traceback.format_exc()))
            self._safe_error(req.id, "internal", "%s failed on the device: %s: %s" % (req.op, type(exc).__name__, exc))
        finally:
            with self.lock:
                self.requests.pop(req.id, None)
            req.done.set()

    # ---- uploads (on the reader thread) ------------------------------------------------------
    def start_upload(self, req):
        try:
            up = Upload(self.fs, req.args)
        except RemoteError as exc:
            self.reply_error(req.id, exc.code, exc.message)
            return
        except OSError as exc:
            self.reply_error(req.id, "io_error", "put failed on the device: %s" % (exc.strerror or exc))
            return
        with self.lock:
            self.uploads[req.id] = up
        if up.size == 0 or up.offset == up.size:
            self.on_data(req.id, up.offset, b"", True)

    def on_data_message(self, h, body):
        rid = h.get("id")
        if not valid_id(rid):
            self.reject("data without a usable id (id %s)" % shorten(rid, 40))
            return
        with self.lock:
            up = self.uploads.get(rid)
        if up is None:
            return  # late data for a cancelled or failed upload
        off, eof = h.get("off"), h.get("eof", False)
        if eof is None:
            eof = False
        if not is_int(off) or off < 0 or not isinstance(eof, bool):
            self._fail_upload(rid, up, "bad_request", "data for upload %d needs off (a whole number >= 0) and eof "
                              "(true or false), got off=%s, eof=%s" % (rid, shorten(off, 40), shorten(eof, 40)))
            return
        self.on_data(rid, off, body, eof)

    def on_data(self, rid, off, body, eof):
        with self.lock:
            up = self.uploads.get(rid)
        if up is None:
            return
        try:
            if up.data(off, body, eof):
                with self.lock:
                    self.uploads.pop(rid, None)
                self.reply(rid, up.finish())
            elif body:
                # what has landed, so the laptop shows the device's bytes, not its send buffer's
                self.send({"t": "evt", "id": rid, "data": {"received": up.offset}})
        except RemoteError as exc:
            self._fail_upload(rid, up, exc.code, exc.message)
        except OSError as exc:
            self._fail_upload(rid, up, "io_error", "%s.part: %s" % (shorten(up.rel), exc.strerror or exc))

    def _fail_upload(self, rid, up, code, message):
        with self.lock:
            self.uploads.pop(rid, None)
        up.abort()
        self.reply_error(rid, code, message, {"offset": up.offset})

    def on_cancel(self, h):
        rid = h.get("id")
        if not valid_id(rid):
            self.reject("cancel without a usable id (id %s)" % shorten(rid, 40))
            return
        with self.lock:
            req = self.requests.get(rid)
            up = self.uploads.pop(rid, None)
        if req:
            req.cancel.set()
        if up:
            up.abort()
            self.reply_error(rid, "cancelled", "upload cancelled at %d of %d bytes; run again to resume"
                             % (up.offset, up.size), {"offset": up.offset})

    # ---- operations ------------------------------------------------------------------------
    def op_ping(self, req):
        return {"time": time.time()}

    def op_sleep(self, req):
        """Wait (cancellable) — used to test cancellation and dead-peer handling."""
        seconds = get_float(req.args, "seconds", 1.0, lo=0.0, hi=MAX_SLEEP_S)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if req.cancel.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
                raise RemoteError("cancelled", "cancelled by the operator")
        return {"slept": True}

    def op_health(self, req):
        args = req.args
        paths = dict(DEFAULT_PATHS)
        paths.update(self._path_map(args, "paths"))
        disk_paths = [("root", "/"), ("models", paths["models"])]
        extra = self._path_map(args, "extra_disks")
        if len(extra) > MAX_EXTRA_DISKS:
            raise RemoteError("bad_args", "extra_disks names %d disks; the limit is %d" % (len(extra), MAX_EXTRA_DISKS))
        disk_paths.extend(sorted(extra.items()))
        unit = get_str(args, "service_unit", limit=256)
        if unit is not None and (not _UNIT.match(unit) or unit.startswith("-")):
            raise RemoteError("bad_args", "service_unit %s is not a systemd unit name" % shorten(unit, 80))
        sample_s = get_float(args, "sample_s", 0.25, lo=0.0, hi=MAX_SAMPLE_S)
        fixed = fixed_readings(self.root)  # test hook (FIELDKIT_AGENT_READINGS): numbers that do not move
        if fixed is not None:
            return fixed
        return probes.health(self.root, disk_paths, unit, sample_s)

    def _path_map(self, args, key):
        """``{label: device path}`` from ``args[key]``, every path kept inside the root."""
        table = get_dict(args, key)
        for label, path in table.items():
            if not isinstance(path, str) or len(label) > 100:
                raise RemoteError("bad_args", "%s must map short names to device paths" % key)
            self.fs.resolve(path, allow_root=True)
        return table

    def _journal_path(self, req):
        path = req.args.get("path")
        return self.fs.resolve(DEFAULT_PATHS["journal"] if path is None else path)

    # ---- device journal (fieldkit.agent.devjournal) ------------------------------------------------
    def op_journal_read(self, req):
        return devjournal.read_op(self._journal_path(req), req.args)

    def op_journal_checkpoint(self, req):
        return devjournal.checkpoint_op(self._journal_path(req), req.args)

    # ---- model store (fieldkit.agent.models) -----------------------------------------------------
    def store(self):
        """The device's model store, its paths read from the device's own configuration."""
        return ModelStore.open(self.fs)

    def op_model_smoke(self, req):
        from fieldkit.agent.smoke import smoke_op
        store = self.store()
        return smoke_op(store, req, lambda name, version, result: activation.record_smoke(
            store, name, version, result, self.model_locks))

    def op_bench_model(self, req):
        """Find the .onnx file of an installed model: ``NAME/current`` or ``NAME/VERSION`` under
        ``models_dir`` (see :class:`~fieldkit.agent.models.ModelStore`)."""
        args = req.args
        models_dir = get_str(args, "models_dir", DEFAULT_PATHS["models"])
        store = ModelStore(self.fs, self.fs.resolve(models_dir), label=models_dir)
        return store.find(args.get("name"), args.get("version"))
