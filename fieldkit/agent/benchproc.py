"""The benchmark as a process of its own (stdlib only, Python 3.6 syntax).

The agent's ``bench`` operation checks the laptop's settings once against
:data:`fieldkit.agent.benchsettings.SETTINGS`, starts ``fieldkit-agent bench --settings-json JSON`` in a
new session (its own process group), relays its JSON lines as request events, and ends the whole
group when the request is cancelled or the laptop goes away: nothing is left running on the
device. One benchmark runs at a time per device (:class:`BenchLock`).
"""

import atexit
import collections
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

from fieldkit.agent import benchsettings
from fieldkit.agent.fields import get_sha256
from fieldkit.agent.files import open_nofollow, refuse_symlink
from fieldkit.agent.protocol import RemoteError, StreamClosed


def bench_op(fs, req):
    """``bench {model, inputs, lock, expect_sha256, <settings>}``: run it and answer its result.

    ``started`` and ``progress`` lines become request events; the ``result`` line is the answer;
    an ``error`` line becomes an error with the benchmark's own code and message.
    """
    args = req.args
    raw = dict((k, args.get(k)) for k in benchsettings.SETTING_KEYS if args.get(k) is not None)
    for key in ("model", "inputs"):
        if key in raw:
            rel = raw[key]
            raw[key] = fs.resolve(rel)
            refuse_symlink(raw[key], rel)
    try:
        settings = benchsettings.check_settings(raw)
    except benchsettings.BenchError as exc:
        raise RemoteError("bad_args", exc.message)
    expect = get_sha256(args, "expect_sha256")
    lock_rel = args.get("lock")
    lock = BenchLock(fs.resolve(lock_rel) if lock_rel is not None else None, fs)
    lock.acquire()
    try:
        cmd = bench_command() + ["--settings-json", json.dumps(settings.as_json(), separators=(",", ":"))]
        run = BenchProcess(cmd, cwd=fs.root)
        try:
            return run.relay(req, expect)
        finally:
            run.stop()
    finally:
        lock.release()


def bench_command(sub="bench"):
    """How to start this very agent's ``bench`` (or ``smoke``) command: ``python agent.pyz bench``
    when the agent runs from its zipapp, else ``python -m fieldkit.agent bench`` with the package
    on PYTHONPATH."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../fieldkit
    entry = os.path.dirname(package)  # the sys.path entry that holds fieldkit: a dir or the .pyz
    if os.path.isfile(entry):
        return [sys.executable, entry, sub]
    return [sys.executable, "-m", "fieldkit.agent", sub]


def bench_env():
    env = dict(os.environ)
    entry = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isdir(entry):
        env["PYTHONPATH"] = entry + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONSTARTUP", None)
    return env


# Benchmark process groups still running, ended when the agent exits (SIGTERM under --serial).
RUNNING = set()
RUNNING_LOCK = threading.Lock()


def kill_leftovers():
    with RUNNING_LOCK:
        groups = list(RUNNING)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


atexit.register(kill_leftovers)


class BenchLock(object):
    """One benchmark at a time per device: two at once would measure each other."""

    def __init__(self, path, fs=None):
        self.path = path
        self.fs = fs
        self.fd = None

    def acquire(self):
        if not self.path:
            return
        try:
            import fcntl
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except (ImportError, OSError):
            return  # no lock possible (read-only dir): run unguarded rather than refuse
        if self.fs is not None:
            self.fs.check_parent(self.path)
        try:
            fd = open_nofollow(self.path, self.fs.device_path(self.path) if self.fs else self.path,
                               os.O_RDWR | os.O_CREAT, 0o644)
        except RemoteError as exc:
            if exc.code == "io_error":
                return  # no lock possible (read-only dir): run unguarded rather than refuse
            raise
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

    def __init__(self, cmd, cwd, what="benchmark"):
        self.cmd = cmd
        self.what = what
        self.stderr_tail = collections.deque(maxlen=40)
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd=cwd, env=bench_env(),
                                         close_fds=True, start_new_session=True)
        except OSError as exc:
            raise RemoteError("bench_start_failed", "could not start the %s process (%s): %s" % (what, cmd[0], exc))
        self.pgid = self.proc.pid  # start_new_session: the child leads its own group
        with RUNNING_LOCK:
            RUNNING.add(self.pgid)
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
            raise RemoteError("cancelled", "%s stopped on the device%s; its process (pid %d) has ended%s" % (
                self.what, "" if runs is None else " after %d timed runs" % runs, self.proc.pid,
                " and nothing was left running" if gone else ", but its process group is still alive"))
        if result is not None and rc == 0:
            if started is not None:
                result["started"] = {k: v for k, v in started.items() if k not in ("event", "model", "settings")}
                result["started"]["settings"] = started.get("settings")
            return result
        if error is not None:
            raise RemoteError(str(error.get("code") or "bench_failed"), str(error.get("message") or self.what + " failed"))
        tail = [t for t in self.stderr_tail if t.strip()]
        if rc is not None and rc < 0:
            why = "was killed by %s" % _signal_name(rc)
            if rc == -signal.SIGKILL:
                why += " (often the kernel's out-of-memory killer: check free memory and dmesg)"
        else:
            why = "exited with status %s without a result" % rc
        raise RemoteError("bench_crashed", "the %s process %s%s" % (self.what, why, (": " + tail[-1][:300]) if tail else ""))

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
            with RUNNING_LOCK:
                RUNNING.discard(self.pgid)
            self._err.join(2.0)
            for f in (self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
