"""The device's own journal: ``var/lib/fieldkit/journal.jsonl`` (stdlib only, Python 3.6 syntax).

One JSON object per line, hash-chained::

    {"v": 1, "journal": ID, "seq": N, "time": "2026-11-23T10:00:00.000000Z",
     "event": "laptop.checkpoint", "details": {...}, "prev": HASH_OF_N-1, "hash": HASH}

``hash`` is the sha256 (hex) of the canonical JSON (sorted keys, no spaces, UTF-8) of every
other field; ``prev`` of the first line is 64 zeros. ``ID`` is made when the first line is
written and stays with the file (a reflashed device starts a new journal with a new id).

Appends take an exclusive ``flock`` on the file, so the agent's threads and several agent
processes (an SSH session and the serial service) can write at once; each line is written with
one ``write`` and fsynced. A line torn by a crash or power loss (no trailing newline) was never
acknowledged; the next append cuts it off, under the lock. Reading never changes the file: readers
take a shared lock and skip a torn tail. The file (and the witness file) is opened with
``O_NOFOLLOW``: a symlink in its place is refused.

The device has no signing key: its journal is witnessed instead. The laptop pulls it on every
connect (``journal_read``) and records its head in the laptop's signed journal, and it writes a
signed checkpoint of the laptop's journal here (``journal_checkpoint``), so each side can show
the other was truncated or rewritten. The latest checkpoint per laptop journal is also kept in
``journal.jsonl.witness.json`` for a quick answer.
"""

import errno
import fcntl
import hashlib
import json
import os
import time
import uuid

from fieldkit.agent.fields import get_bool, get_int, get_str
from fieldkit.agent.files import atomic_write, fsync_dir
from fieldkit.agent.protocol import RemoteError

GENESIS = "0" * 64
MAX_DETAILS = 64 * 1024        # bytes of canonical JSON per event
READ_BUDGET = 256 * 1024       # bytes of entries per journal_read answer: headers are <= 1 MiB and
                               # JSON escaping of non-ASCII text can triple the size
_TAIL_BLOCK = 64 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class JournalProblem(RemoteError):
    """The journal file cannot be used as asked (bad arguments, a broken file, a full disk)."""


def canonical(obj):
    """The bytes that get hashed: sorted keys, no whitespace, UTF-8, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def entry_hash(entry):
    """sha256 hex over every field of ``entry`` except ``hash``."""
    body = dict((k, v) for k, v in entry.items() if k != "hash")
    return hashlib.sha256(canonical(body)).hexdigest()


def utc_now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + (".%06dZ" % int((t % 1) * 1e6))


def check_entry(entry, expect_seq, expect_prev):
    """None when ``entry`` is the valid successor, else ``(problem, message)``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int):
        return ("corrupt", "seq %d is not a journal entry" % expect_seq)
    seq = entry["seq"]
    if seq != expect_seq:
        if seq > expect_seq:
            return ("missing", "seq %d is missing (the journal jumps to seq %d)" % (expect_seq, seq))
        return ("reordered", "seq %d appears where seq %d belongs" % (seq, expect_seq))
    try:
        recomputed = entry_hash(entry)
    except (TypeError, ValueError):
        return ("corrupt", "seq %d cannot be encoded" % seq)
    if recomputed != entry.get("hash"):
        return ("altered", "seq %d was altered: its content does not match its hash" % seq)
    if entry.get("prev") != expect_prev:
        return ("reordered", "seq %d does not follow seq %d: its previous-hash link is broken "
                             "(an entry was removed, replaced or reordered)" % (seq, seq - 1))
    return None


class DeviceJournal(object):
    """The journal file at ``path`` (already resolved under the agent's root)."""

    def __init__(self, path):
        self.path = path
        self.witness_path = path + ".witness.json"

    # ---- writing ---------------------------------------------------------------------------
    def _open_locked(self, create):
        """The journal open for writing under the exclusive lock (None if missing and not ``create``)."""
        directory = os.path.dirname(self.path)
        if create:
            os.makedirs(directory, exist_ok=True)
        flags = os.O_RDWR | _NOFOLLOW | (os.O_CREAT if create else 0)
        try:
            fd = _open(self.path, flags, 0o640)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _open_shared(self):
        """The journal open read-only under a shared lock, or None when there is none."""
        try:
            fd = _open(self.path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def _last_line(self, fd, repair=False):
        """The last complete line (bytes, no newline) or None. A torn tail is skipped; with
        ``repair`` (the writer, under the exclusive lock) it is cut off first."""
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            size = _rfind_newline(fd, size) + 1
            if repair:
                os.ftruncate(fd, size)
                os.fsync(fd)
        if size == 0:
            return None
        start = _rfind_newline(fd, size - 1) + 1
        return os.pread(fd, size - 1 - start, start)

    def append(self, event, details=None):
        """Append one event; returns the written entry. Raises JournalProblem or OSError."""
        fd = self._open_locked(create=True)
        try:
            return self._append_locked(fd, event, details)
        finally:
            os.close(fd)

    def _append_locked(self, fd, event, details):
        if not isinstance(event, str) or not event or len(event) > 200:
            raise JournalProblem("bad_args", "event must be a short non-empty string")
        details = details if details is not None else {}
        if not isinstance(details, dict):
            raise JournalProblem("bad_args", "details must be an object")
        if len(canonical(details)) > MAX_DETAILS:
            raise JournalProblem("too_large", "event details exceed %d bytes" % MAX_DETAILS)
        last = self._last_line(fd, repair=True)
        if last is None:
            journal_id, seq, prev = uuid.uuid4().hex, 1, GENESIS
        else:
            try:
                head = json.loads(last.decode("utf-8"))
                journal_id, seq, prev = head["journal"], int(head["seq"]) + 1, head["hash"]
            except (ValueError, KeyError, TypeError, RecursionError):
                raise JournalProblem("corrupt", "the last line of %s is not a journal entry; "
                                                "the file was damaged or edited" % self.path)
        entry = {"v": 1, "journal": journal_id, "seq": seq, "time": utc_now(), "event": event,
                 "details": details, "prev": prev}
        entry["hash"] = entry_hash(entry)
        line = memoryview(canonical(entry) + b"\n")
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            while line:
                line = line[os.write(fd, line):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, end)  # no partial line left behind (disk full)
            raise
        if seq == 1:
            fsync_dir(os.path.dirname(self.path))
        return entry

    # ---- reading ---------------------------------------------------------------------------
    def _lines(self):
        """Complete lines (bytes, without the newline), in order; a torn tail is skipped."""
        try:
            fh = os.fdopen(_open(self.path, os.O_RDONLY | _NOFOLLOW), "rb")
        except FileNotFoundError:
            return
        with fh:
            for raw in fh:
                if raw.endswith(b"\n"):
                    yield raw[:-1]

    def head(self):
        """``{"journal_id", "seq", "hash"}`` of the last complete entry (seq 0 when empty)."""
        fd = self._open_shared()
        if fd is None:
            return {"journal_id": None, "seq": 0, "hash": GENESIS}
        try:
            last = self._last_line(fd)
        finally:
            os.close(fd)
        if last is None:
            return {"journal_id": None, "seq": 0, "hash": GENESIS}
        try:
            e = json.loads(last.decode("utf-8"))
            return {"journal_id": e["journal"], "seq": int(e["seq"]), "hash": e["hash"]}
        except (ValueError, KeyError, TypeError, RecursionError):
            raise JournalProblem("corrupt", "the last line of %s is not a journal entry" % self.path)

    def read(self, since=0, journal_id=None, max_bytes=READ_BUDGET, verify=False):
        """Entries with seq >= ``since`` (``since`` counts in ``journal_id``; a different
        journal on the device starts from seq 1), at most about ``max_bytes`` of them.

        Returns ``{"journal_id", "entries", "head", "more", "chain"}``; ``chain`` is the result
        of checking the whole file when ``verify`` is true, else None.
        """
        head = self.head()
        if journal_id is not None and head["journal_id"] != journal_id:
            since = 0
        since = max(1, int(since))
        entries = []
        used = 0
        more = False
        for index, raw in enumerate(self._lines()):
            if index + 1 < since:  # line N holds seq N; checked when parsed below
                continue
            if used + len(raw) > max_bytes and entries:
                more = True
                break
            try:
                entry = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):
                entry = None
            entries.append(entry if isinstance(entry, dict) else {"corrupt_line": index + 1})
            used += len(raw) + 1
            if index + 1 >= head["seq"]:
                break
        chain = self.verify() if verify else None
        return {"journal_id": head["journal_id"], "entries": entries, "head": head,
                "more": more, "chain": chain}

    def verify(self):
        """Check the whole chain: ``{"ok", "entries", "bad_seq", "problem", "message"}``."""
        prev = GENESIS
        seq = 0
        journal_id = None
        for index, raw in enumerate(self._lines()):
            seq = index + 1
            try:
                entry = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):
                return _bad(seq, "corrupt", "line %d is not valid JSON" % seq)
            problem = check_entry(entry, seq, prev)
            if problem is None and journal_id is not None and entry.get("journal") != journal_id:
                problem = ("altered", "seq %d names another journal" % seq)
            if problem:
                return _bad(seq, problem[0], problem[1])
            journal_id = entry.get("journal")
            prev = entry["hash"]
        return {"ok": True, "entries": seq, "bad_seq": None, "problem": None, "message": "ok"}

    # ---- laptop checkpoints ----------------------------------------------------------------
    def record_checkpoint(self, checkpoint):
        """Keep a laptop's signed checkpoint: as an event in this journal and as the latest
        for that laptop journal. Returns ``{"previous", "entry", "head"}``."""
        if not isinstance(checkpoint, dict):
            raise JournalProblem("bad_args", "checkpoint must be an object")
        jid = checkpoint.get("journal_id")
        if not isinstance(jid, str) or not jid or len(jid) > 100:
            raise JournalProblem("bad_args", "checkpoint needs the laptop's journal_id")
        for key in ("seq", "head", "signature"):
            if key not in checkpoint:
                raise JournalProblem("bad_args", "checkpoint needs %s" % key)
        fd = self._open_locked(create=True)  # the journal's lock also guards the witness file
        try:
            table = self.witnessed()
            previous = table.get(jid)
            entry = self._append_locked(fd, "laptop.checkpoint", checkpoint)
            table[jid] = checkpoint
            atomic_write(self.witness_path, canonical(table) + b"\n")
        finally:
            os.close(fd)
        head = {"journal_id": entry["journal"], "seq": entry["seq"], "hash": entry["hash"]}
        return {"previous": previous, "entry": entry, "head": head}

    def witnessed(self):
        """``{laptop journal id: latest checkpoint}``."""
        try:
            with os.fdopen(_open(self.witness_path, os.O_RDONLY | _NOFOLLOW), "rb") as fh:
                table = json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, RecursionError):
            return {}
        return table if isinstance(table, dict) else {}


def _open(path, flags, mode=0o640):
    """``os.open``; a symlink in the journal's place is refused (JournalProblem ``bad_path``)."""
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JournalProblem("bad_path", "%s is a symlink; refused" % os.path.basename(path))
        raise


def _rfind_newline(fd, end):
    """Offset of the last newline before ``end``, or -1."""
    pos = end
    while pos > 0:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        i = os.pread(fd, step, pos).rfind(b"\n")
        if i >= 0:
            return pos + i
    return -1


def _bad(seq, problem, message):
    return {"ok": False, "entries": seq, "bad_seq": seq, "problem": problem, "message": message}


def append_event(path, event, details=None):
    """For the agent's operations: record ``event`` in the device journal at ``path``."""
    return DeviceJournal(path).append(event, details)


# ---- the agent operations (registered in fieldkit.agent.server) ------------------------------
def read_op(path, args):
    """``journal_read {since, journal_id, max_bytes, verify}`` -> :meth:`DeviceJournal.read`."""
    since = get_int(args, "since", 0, lo=0)
    budget = min(get_int(args, "max_bytes", READ_BUDGET, lo=1), READ_BUDGET)
    journal_id = get_str(args, "journal_id", limit=100)
    verify = get_bool(args, "verify")
    try:
        return DeviceJournal(path).read(since, journal_id, budget, verify)
    except OSError as exc:
        raise JournalProblem("io_error", "reading the device journal failed: %s" % exc)


def checkpoint_op(path, args):
    """``journal_checkpoint {checkpoint}`` -> :meth:`DeviceJournal.record_checkpoint`."""
    try:
        return DeviceJournal(path).record_checkpoint(args.get("checkpoint"))
    except OSError as exc:
        raise JournalProblem("io_error", "writing the device journal failed: %s" % exc)
