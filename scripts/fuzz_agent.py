#!/usr/bin/env python3
"""Throw hostile frames at a real agent (``python -m fieldkit.agent serve --stdio``) and count failures.

    scripts/fuzz_agent.py --cases 100000 [--seed 1] [--replay INDEX]

Every case is a run of bytes written to the agent's stdin: random bytes, valid frames with
mutated header fields (wrong types, out-of-range values, unknown ops, hostile paths), bad JSON,
headers longer than their frame, oversized and out-of-step length fields, upload sequences with
broken offsets. After every case the harness sends ``ping`` and wants the answer within 2 s.

The harness models the agent's framer (:func:`frame_plan`): when a case leaves a frame
unfinished it completes it with zero bytes, so the next ``ping`` starts on a frame boundary; when
a case holds a length field no frame can have (shorter than 4 or longer than ``MAX_SKIP``), the
agent must end the session cleanly instead: exit status 0, no traceback on stderr. Then a fresh
agent is started. Agents live for many cases (a few processes in all).

Printed at the end: cases tried, agent deaths (an exit other than a clean end of session, or a
traceback on stderr), hangs (no answer to ``ping`` within 2 s), and the time taken. Case ``i`` of
seed ``s`` is the same bytes on every run: ``--replay i --seed s`` runs just that case.

The test suite imports this file (tests/test_fuzz_agent.py): :func:`make_case` and :func:`run`
are the one implementation of the generator and the harness.
"""

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fieldkit.agent.protocol import (  # noqa: E402
    MAX_FRAME, MAX_HEADER, MAX_SKIP, FrameReader, FrameWriter, ProtocolError, StreamClosed,
)

PING_BASE = 2 ** 52  # harness ids; fuzzed ids stay below or are invalid
OPS = ["ping", "health", "stat", "hash", "remove", "sleep", "journal_read", "journal_checkpoint", "bench",
       "bench_model", "put"]
TYPES = ["req", "data", "cancel", "hello", "hb", "res", "evt"]
ARG_KEYS = ["path", "size", "sha256", "offset", "seconds", "sample_s", "paths", "extra_disks", "service_unit",
            "since", "max_bytes", "journal_id", "verify", "checkpoint", "model", "inputs", "lock", "expect_sha256",
            "warmup", "runs", "duration_s", "min_runs", "max_seconds", "threads", "rate_hz", "shapes", "seed",
            "spin", "providers", "progress_interval_s", "name", "version", "models_dir"]
PATHS = ["/", "", ".", "..", "/..", "/../..", "../../etc/passwd", "/etc/passwd", "/link", "/link/x",
         "/dirlink/escape.bin", "/var/lib/fieldkit/staging/f.bin", "/var/lib/fieldkit/journal.jsonl",
         "/var/lib/fieldkit/models", "/a/b/c/d", "/x\x00y", "/\u00e9\u2028\ud7ff", "//double//slash//",
         "/var/lib/fieldkit/staging/", "/journal.jsonl", "/sub/../../../outside"]


# ---- the case generator -----------------------------------------------------------------------

def _text(rng, n=None):
    n = rng.randint(0, 12) if n is None else n
    pool = "abcxyz/._-~ \t\n\\\"'\x00\x7f\u00e9\u4e2d\U0001f600"
    return "".join(rng.choice(pool) for _ in range(n))


def _number(rng):
    return rng.choice([0, 1, -1, 2, 7, 16, 255, 2 ** 31, 2 ** 53, 2 ** 53 - 1, 2 ** 63, -2 ** 63, 10 ** 30,
                       0.5, -0.0, 1e308, float("nan"), float("inf"), float("-inf"), rng.randint(-1000, 100000),
                       rng.random() * 10])


def _value(rng, depth=0):
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return _number(rng)
    if kind == 3:
        return _text(rng)
    if kind == 4:
        return rng.choice(PATHS)
    if kind == 5:
        return rng.choice(["x" * rng.choice([200, 5000, 300000]), "\u00e9" * rng.choice([10, 4097, 200000])])
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return dict((rng.choice(ARG_KEYS + [_text(rng)]), _value(rng, depth + 1)) for _ in range(rng.randint(0, 4)))


def _good_value(rng, key):
    """A plausible value for a known argument, so that validation passes often enough to reach the op."""
    if key in ("path", "model", "inputs", "lock", "models_dir"):
        return rng.choice(PATHS + ["/var/lib/fieldkit/staging/f%d.bin" % rng.randint(0, 5)])
    if key in ("size", "offset", "since", "max_bytes", "warmup", "runs", "min_runs", "threads", "seed"):
        return rng.choice([0, 1, 3, 10, 100, 65536])
    if key in ("seconds", "sample_s", "duration_s", "max_seconds", "rate_hz", "progress_interval_s"):
        return rng.choice([0, 0.01, 0.05, 0.1, 0.2])
    if key in ("sha256", "expect_sha256"):
        return rng.choice(["0" * 64, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"])
    if key == "verify":
        return rng.choice([True, False])
    if key == "spin":
        return rng.choice(["on", "off"])
    if key == "providers":
        return ["CPUExecutionProvider"]
    if key == "shapes":
        return {"input": [1, 3]}
    if key == "checkpoint":
        return {"journal_id": "j1", "seq": 1, "head": "0" * 64, "signature": "s"}
    if key in ("name", "version", "journal_id", "service_unit"):
        return rng.choice(["anomaly", "1.0.0", "current", "..", "a/b", "ssh.service", "-x"])
    return _value(rng)


def _id(rng):
    return rng.choice([rng.randint(0, 1000), rng.randint(0, 1000), rng.randint(0, 1000), -1, 2 ** 53,
                       2 ** 64, True, False, 1.5, "7", None, [1], {"a": 1}])


def _header(rng):
    """A header that is mostly well-formed, with some fields of the wrong type or out of range."""
    h = {"t": rng.choice(TYPES) if rng.random() < 0.9 else _value(rng)}
    if rng.random() < 0.9:
        h["id"] = _id(rng)
    t = h["t"]
    if t == "req" or rng.random() < 0.1:
        h["op"] = rng.choice(OPS) if rng.random() < 0.85 else _value(rng)
        if rng.random() < 0.9:
            if rng.random() < 0.9:
                args = {}
                for key in rng.sample(ARG_KEYS, rng.randint(0, 6)):
                    args[key] = _good_value(rng, key) if rng.random() < 0.6 else _value(rng)
                h["args"] = args
            else:
                h["args"] = _value(rng)
    if t == "data" or rng.random() < 0.1:
        h["off"] = rng.choice([0, 0, rng.randint(0, 100)]) if rng.random() < 0.5 else _value(rng)
        h["eof"] = rng.choice([True, False]) if rng.random() < 0.6 else _value(rng)
    for _ in range(rng.randint(0, 2)):
        h[_text(rng, 3)] = _value(rng)
    return h


def _message(header_bytes, body=b""):
    return struct.pack(">I", len(header_bytes)) + header_bytes + body


def _frame(message):
    return struct.pack(">I", len(message)) + message


def _json(h):
    return json.dumps(h, separators=(",", ":")).encode("utf-8")


def _body(rng):
    return os.urandom(rng.choice([0, 0, 1, 16, 1000, 70000])) if rng.random() < 0.5 else b""


def make_case(rng):
    """One case: ``(kind, bytes)``. Deterministic for a seeded ``random.Random``."""
    r = rng.random()
    if r < 0.10:  # random bytes
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 48)))
        if rng.random() < 0.7 and len(data) >= 4:  # mostly one plausible frame, so that it gets parsed
            data = struct.pack(">I", len(data) - 4 + rng.randint(0, 16)) + data[4:]
        return "random_bytes", data
    if r < 0.62:  # structured header with mutated fields
        return "header", _frame(_message(_json(_header(rng)), _body(rng)))
    if r < 0.72:  # bad JSON or bad UTF-8 in the header
        choice = rng.randrange(7)
        raw = [b"{", b"not json", b"\xff\xfe{}", b"[" * 100000 + b"]" * 100000, b'{"t":"req","id":' + b"9" * 5000 + b"}",
               b'{"t":1}', b'{"t":"req","id":1,"op":"ping","args":{"a":' + b"[" * 50000 + b"]" * 50000 + b"}}"][choice]
        return "bad_json", _frame(_message(raw))
    if r < 0.80:  # header length field wrong inside a well-framed message
        hdr = _json(_header(rng))
        hlen = rng.choice([len(hdr) + 1, len(hdr) + 1000, MAX_HEADER + 1, 2 ** 32 - 1, 0, 1, len(hdr) - 1])
        return "header_length", _frame(struct.pack(">I", max(0, hlen) & 0xFFFFFFFF) + hdr)
    if r < 0.83:  # frame length field: oversized (skipped) or truncated (completed by the harness)
        if rng.random() < 0.5:
            n = MAX_FRAME + rng.randint(1, 4096)
            return "oversized", struct.pack(">I", n) + os.urandom(rng.randint(0, 100))
        msg = _message(_json(_header(rng)))
        return "truncated", struct.pack(">I", len(msg) + rng.randint(1, 500)) + msg
    if r < 0.845:  # a length field no frame can have: the session must end cleanly
        n = rng.choice([0, 1, 2, 3, MAX_SKIP + 1, 2 ** 32 - 1])
        return "out_of_step", struct.pack(">I", n) + os.urandom(rng.randint(0, 16))
    # an upload with hostile data messages, or a burst of requests
    rid = rng.randint(1, 1000)
    if rng.random() < 0.8:
        size = rng.choice([0, 1, 10, 100000])
        parts = [_frame(_message(_json({"t": "req", "id": rid, "op": "put", "args": {
            "path": rng.choice(["/var/lib/fieldkit/staging/up.bin", "/link/up.bin", "/", "/dirlink/up.bin"]),
            "size": size, "offset": rng.choice([0, 0, 5])}})))]
        for _ in range(rng.randint(0, 4)):
            off = rng.choice([0, 5, 10, -1, "0", None, 2 ** 70, [0], 1.0])
            hid = rng.choice([rid, rid, [rid], str(rid), True])
            hdr = {"t": "data", "id": hid, "off": off, "eof": rng.choice([True, False, None, "yes", 1])}
            parts.append(_frame(_message(_json(hdr), os.urandom(rng.choice([0, 5, 10])))))
        if rng.random() < 0.3:
            parts.append(_frame(_message(_json({"t": "cancel", "id": rng.choice([rid, [rid], None])}))))
        return "upload", b"".join(parts)
    n = rng.randint(10, 60)
    return "burst", b"".join(_frame(_message(_json({"t": "req", "id": rid + i, "op": "sleep",
                                                    "args": {"seconds": 0.2}}))) for i in range(n))


def frame_plan(data, max_frame=MAX_FRAME, max_skip=MAX_SKIP):
    """What the agent's framer does with ``data``: ``("end", pad)`` when a length field puts the
    stream out of step, else ``("ok", pad)``; ``pad`` is the zero bytes that finish the last frame
    (or the last length field).

    A partial length field is finished so that it reads 4 when it can (a 4-byte frame)."""
    pos, n = 0, len(data)
    while True:
        rest = n - pos
        if rest == 0:
            return "ok", b""
        if rest < 4:
            head = data[pos:]
            fill = (b"\x00" * (3 - rest) + b"\x04") if not head.strip(b"\x00") else b"\x00" * (4 - rest)
            length = struct.unpack(">I", head + fill)[0]
            if length < 4 or length > max_skip:
                return "end", fill  # the agent needs the whole length field to see it is out of step
            return "ok", fill + b"\x00" * length
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        if length < 4 or length > max_skip:
            return "end", b""
        if rest - 4 < length:
            return "ok", b"\x00" * (length - (rest - 4))
        pos += 4 + length


# ---- the harness --------------------------------------------------------------------------------

class _Pipe(object):
    def __init__(self, rfd=None, wfd=None):
        self.rfd, self.wfd = rfd, wfd

    def read(self, n):
        try:
            return os.read(self.rfd, n)
        except OSError:
            return b""

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]


class AgentProcess(object):
    """``python -m fieldkit.agent serve --stdio --root ROOT`` and a client speaking the real protocol."""

    def __init__(self, root, python=None, agent_path=None):
        env = dict(os.environ)
        where = agent_path or ROOT
        env["PYTHONPATH"] = where + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([python or sys.executable, "-m", "fieldkit.agent", "serve", "--stdio",
                                      "--root", root], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0, cwd=where, env=env)
        self.writer = FrameWriter(_Pipe(wfd=self.proc.stdin.fileno()))
        self._raw_lock = self.writer._lock
        self.cond = threading.Condition()
        self.waiting = {}  # id -> [res headers]
        self.hello = None
        self.replies = 0
        self.stderr = bytearray()
        self.tracebacks = 0
        self._seen_tb = 0
        self._ids = PING_BASE
        self.eof = False
        threading.Thread(target=self._read, daemon=True).start()
        self._err = threading.Thread(target=self._drain_err, daemon=True)
        self._err.start()

    def _read(self):
        reader = FrameReader(_Pipe(rfd=self.proc.stdout.fileno()))
        try:
            while True:
                try:
                    msg = reader.read_message()
                except ProtocolError:
                    continue
                h = msg.header
                with self.cond:
                    if h.get("t") == "hello":
                        self.hello = h
                    elif h.get("t") == "res":
                        self.replies += 1
                        box = self.waiting.get(h.get("id")) if isinstance(h.get("id"), int) else None
                        if box is not None:
                            box.append(h)
                    self.cond.notify_all()
        except (StreamClosed, OSError, ValueError):
            pass
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def _drain_err(self):
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                return
            with self.cond:
                self.stderr += chunk
                self.tracebacks += (self.stderr[max(0, len(self.stderr) - len(chunk) - 20):].count(b"Traceback"))
                if len(self.stderr) > 1 << 20:
                    del self.stderr[:len(self.stderr) - (1 << 19)]

    # -- sending
    def send(self, header, body=b""):
        self.writer.send(header, body)

    def send_raw(self, data):
        with self._raw_lock:
            view = memoryview(data)
            fd = self.proc.stdin.fileno()
            while view:
                view = view[os.write(fd, view):]

    def expect(self, rid):
        with self.cond:
            self.waiting.setdefault(rid, [])

    def replies_for(self, rid):
        with self.cond:
            return list(self.waiting.get(rid, []))

    def wait_reply(self, rid, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.waiting.get(rid):
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    return None
                self.cond.wait(left)
            return self.waiting.pop(rid)[0]

    def call(self, op, args=None, timeout=10.0, body=b""):
        """The ``res`` header of ``op`` (None when none came in time)."""
        with self.cond:
            self._ids += 1
            rid = self._ids
            self.waiting[rid] = []
        self.send({"t": "req", "id": rid, "op": op, "args": args if args is not None else {}}, body)
        return self.wait_reply(rid, timeout)

    def ping(self, timeout=2.0):
        try:
            res = self.call("ping", timeout=timeout)
        except (OSError, ProtocolError):
            return False
        return bool(res and res.get("ok"))

    # -- the process
    def threads(self):
        with open("/proc/%d/status" % self.proc.pid) as fh:
            for line in fh:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return -1

    def wait_exit(self, timeout=10.0):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._err.join(2.0)
        return rc

    def stderr_text(self):
        with self.cond:
            return self.stderr.decode("utf-8", "replace")

    def close(self):
        for f in (self.proc.stdin,):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._err.join(2.0)
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def make_root(base):
    """A device root with a file, a symlink to a directory outside it and a symlinked file."""
    root = os.path.join(base, "device")
    outside = os.path.join(base, "outside")
    for d in (os.path.join(root, "var/lib/fieldkit/staging"), os.path.join(root, "var/lib/fieldkit/models"), outside):
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(outside, "secret.txt"), "w") as fh:
        fh.write("outside the device root\n")
    os.symlink(outside, os.path.join(root, "dirlink"))
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(root, "link"))
    with open(os.path.join(root, "var/lib/fieldkit/journal.jsonl"), "wb") as fh:
        fh.write(b'{"torn": "line without a newline"')
    return root, outside


class Stats(object):
    def __init__(self):
        self.cases = self.deaths = self.hangs = self.sessions_ended = self.agents = 0
        self.failures = []  # (index, kind, what)
        self.seconds = 0.0

    def line(self):
        return ("cases tried: %d / agent deaths: %d / hangs: %d (%d clean ends of session, %d agents, %.1f s)"
                % (self.cases, self.deaths, self.hangs, self.sessions_ended, self.agents, self.seconds))


def case_rng(seed, index):
    return random.Random("%s:%d" % (seed, index))


def run(cases, seed=1, base=None, indices=None, max_cases_per_agent=2000, log=None, progress_every=0,
        agent_path=None):
    """Run the fuzzer; returns :class:`Stats`. ``indices`` replays just those cases."""
    own = base is None
    base = base or tempfile.mkdtemp(prefix="fieldkit-fuzz-")
    stats = Stats()
    t0 = time.monotonic()
    root, outside = make_root(base)
    outside_before = sorted(os.listdir(outside))
    agent = None
    served = 0
    try:
        for index in (indices if indices is not None else range(cases)):
            if agent is None or served >= max_cases_per_agent:
                if agent is not None:
                    agent.close()
                agent = AgentProcess(root, agent_path=agent_path)
                stats.agents += 1
                served = 0
            kind, data = make_case(case_rng(seed, index))
            plan, pad = frame_plan(data)
            stats.cases += 1
            served += 1
            tb_before = agent.tracebacks
            try:
                agent.send_raw(data + pad)
                alive = agent.ping(2.0) if plan == "ok" else None
            except OSError:
                alive = False
            if plan == "end":
                rc = agent.wait_exit(5.0)
                text = agent.stderr_text()
                if rc != 0 or agent.tracebacks:
                    stats.deaths += 1
                    stats.failures.append((index, kind, "exit status %s after an out-of-step frame: %s"
                                           % (rc, text[-500:])))
                else:
                    stats.sessions_ended += 1
                agent.close()
                agent = None
                continue
            if agent.tracebacks > tb_before:
                stats.deaths += 1
                stats.failures.append((index, kind, "traceback on stderr: %s" % agent.stderr_text()[-1500:]))
            if not alive:
                rc = agent.proc.poll()
                if rc is not None:
                    stats.deaths += 1
                    stats.failures.append((index, kind, "agent exited with status %s: %s"
                                           % (rc, agent.stderr_text()[-1500:])))
                else:
                    stats.hangs += 1
                    stats.failures.append((index, kind, "no answer to ping within 2 s"))
                agent.proc.kill()
                agent.close()
                agent = None
            if log and progress_every and stats.cases % progress_every == 0:
                stats.seconds = time.monotonic() - t0
                log(stats.line())
        if sorted(os.listdir(outside)) != outside_before:
            stats.deaths += 1
            stats.failures.append((-1, "escape", "files appeared outside the device root: %s"
                                   % sorted(os.listdir(outside))))
    finally:
        if agent is not None:
            agent.close()
        stats.seconds = time.monotonic() - t0
        if own:
            shutil.rmtree(base, ignore_errors=True)
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=2000, help="number of cases (default 2000)")
    p.add_argument("--seed", default="1", help="seed of the case generator (default 1)")
    p.add_argument("--replay", type=int, action="append", metavar="INDEX", help="run only case INDEX (repeatable)")
    p.add_argument("--agent-path", metavar="DIR", help="run the agent from DIR, a directory holding fieldkit/agent "
                   "(e.g. an older checkout: git archive HEAD fieldkit | tar -x -C DIR)")
    args = p.parse_args(argv)

    def log(line):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    stats = run(args.cases, args.seed, indices=args.replay, log=log, progress_every=5000,
                agent_path=os.path.abspath(args.agent_path) if args.agent_path else None)
    for index, kind, what in stats.failures[:20]:
        print("case %d (%s): %s" % (index, kind, what))
    print(stats.line())
    print("reproduce: scripts/fuzz_agent.py --cases %d --seed %s" % (args.cases, args.seed))
    return 1 if stats.deaths or stats.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
