"""The operator journal as one self-contained file, verifiable on any machine with fieldkit.

``fieldkit audit export --out FILE`` writes, and ``fieldkit audit verify --bundle FILE`` checks::

    {"format": "fieldkit-audit-bundle/1",
     "journal_id": ID, "operator": NAME, "public_key_pem": PEM, "key_fingerprint": "SHA256:...",
     "exported_at": TIME,
     "entries": [{"seq", "time", "operator", "device", "action", "outcome", "details",
                  "prev", "hash", "sig"}, ...],
     "checkpoints": [{"journal_id", "seq", "head", "time", "signature", "witness"}, ...],
     "head": {the checkpoint signed at export: the last entry's seq and hash},
     "device_journals": [{"journal_id", "device", "entries": [device journal lines]}]}

Hashes and signatures are those of :mod:`fieldkit.journal`. A bundle proves that its entries
were signed by the key inside it; compare ``key_fingerprint`` with the operator's registered
fingerprint (``--fingerprint``) to know it was *that* operator's key.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

from fieldkit.errors import Cancelled, ConfigError
from fieldkit.fsutil import atomic_open
from fieldkit.journal import Checkpoint, Journal, VerifyResult, utc_now, verify_device_entries, verify_rows
from fieldkit.signing import canonical_text, key_fingerprint, load_public_key

FORMAT = "fieldkit-audit-bundle/1"


def export_bundle(journal: Journal, out: Path, *, progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None) -> dict:
    """Write the bundle to ``out`` (atomically: a temporary file renamed when complete).

    Signs a fresh checkpoint of the head (kept in the journal too). Returns a summary. The folder
    ``out`` goes in must exist: a mistyped USB path (``/media/usb0/...`` for ``/media/usb/...``)
    is a ConfigError (exit 2), never a copy of the journal quietly left on the local disk."""
    out = Path(out)
    check_export_path(out)
    head = journal.checkpoint(witness="export")
    status = journal.status()
    header = {"format": FORMAT, "journal_id": journal.journal_id, "operator": status["operator"],
              "public_key_pem": journal.public_key_pem, "key_fingerprint": journal.key_fingerprint,
              "exported_at": utc_now()}
    with atomic_open(out) as fh:
        fh.write(json.dumps(header, ensure_ascii=False)[:-1] + ',\n"entries": [\n')
        sep = ""
        for row in journal.iter_rows():
            if row[0] > head.seq:
                break  # appended while exporting: the next export carries them
            fh.write(sep)
            sep = ",\n"
            fh.write(json.dumps(_row_json(row), ensure_ascii=False))
            if progress and row[0] % 1000 == 0:
                progress(row[0], head.seq)
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"export cancelled at seq {row[0]} of {head.seq}; nothing was written")
        fh.write('\n],\n"checkpoints": ')
        fh.write(json.dumps([c.to_json() for c in journal.checkpoints() if c.seq <= head.seq]))
        fh.write(',\n"head": ' + json.dumps(head.to_json()))
        devices = [{"journal_id": d["journal_id"], "device": d["device"],
                    "entries": journal.device_entries(d["journal_id"])} for d in journal.device_journals()]
        fh.write(',\n"device_journals": ' + json.dumps(devices, ensure_ascii=False) + "\n}\n")
    if progress:
        progress(head.seq, head.seq)
    return {"path": str(out), "journal_id": journal.journal_id, "entries": head.seq, "head": head.to_json(),
            "key_fingerprint": journal.key_fingerprint, "device_journals": len(devices),
            "bytes": out.stat().st_size}


def check_export_path(out: Path) -> None:
    """ConfigError unless ``out`` can be a new file in an existing folder (nothing is created)."""
    parent = out.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"cannot export to {out}: the folder {parent} {what}; nothing was written",
                          hint="check the path (is the USB stick mounted?) or create the folder first")
    if out.is_dir():
        raise ConfigError(f"cannot export to {out}: it is a folder; nothing was written",
                          hint=f"name a file in it, e.g. {out / 'audit-bundle.json'}")


def _row_json(row: tuple) -> dict:
    return {"seq": row[0], "time": row[1], "operator": row[2], "device": row[3], "action": row[4],
            "outcome": row[5], "details": json.loads(row[6]), "prev": row[7], "hash": row[8], "sig": row[9]}


def verify_bundle(path: Path, *, expect_fingerprint: str | None = None) -> VerifyResult:
    """Verify a bundle: every entry's hash, link and signature, the checkpoints, the signed
    head (a bundle cut short or extended fails), the device journals. Needs no FIELDKIT_HOME."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no bundle at {path}") from exc
    except (OSError, ValueError) as exc:
        return VerifyResult(False, "?", problem="corrupt", message=f"{path} is not a readable bundle: {exc}")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return VerifyResult(False, "?", problem="corrupt",
                            message=f"{path} is not a fieldkit audit bundle (format {FORMAT} expected)")
    jid = str(doc.get("journal_id"))
    try:
        public_key = load_public_key(str(doc.get("public_key_pem")))
    except ValueError as exc:
        return VerifyResult(False, jid, problem="corrupt", message=f"the bundle's public key is unusable: {exc}")
    fingerprint = key_fingerprint(public_key)
    if expect_fingerprint and expect_fingerprint != fingerprint:
        return VerifyResult(False, jid, key_fingerprint=fingerprint, problem="wrong key",
                            message=f"the bundle is signed by {fingerprint}, not by {expect_fingerprint}")
    try:
        rows = [_json_row(e) for e in doc["entries"]]
        checkpoints = [Checkpoint.from_json(dict(c, journal_id=jid)) for c in doc.get("checkpoints") or []]
        head = Checkpoint.from_json(dict(doc["head"], journal_id=jid))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return VerifyResult(False, jid, key_fingerprint=fingerprint, problem="corrupt",
                            message=f"the bundle is malformed: {exc}")
    seqs = [r[0] for r in rows]
    ordered = sorted(seqs)
    if seqs != ordered:
        i = next(i for i, (a, b) in enumerate(zip(seqs, ordered)) if a != b)
        return VerifyResult(False, jid, key_fingerprint=fingerprint).fail(
            ordered[i], "reordered", f"the entries are out of order: seq {seqs[i]} stands where seq {ordered[i]} belongs")
    res = verify_rows(rows, jid, public_key, checkpoints + [head])
    if res.ok and head.seq < res.head_seq:
        res.fail(head.seq + 1, "extended", f"the bundle holds entries after its signed head (seq {head.seq}): "
                 f"seq {head.seq + 1}..{res.head_seq} were added after export")
    for dj in doc.get("device_journals") or []:
        d = verify_device_entries(str(dj.get("journal_id")), dj.get("entries") or [])
        d["device"] = dj.get("device")
        res.device_journals.append(d)
        if res.ok and not d["ok"]:
            res.fail(None, "device journal", f"{d['device']}'s journal {d['journal_id'][:12]} is damaged: {d['message']}")
    return res


def _json_row(e: Any) -> tuple:
    if not isinstance(e, dict):
        raise ValueError("an entry is not an object")
    return (int(e["seq"]), str(e["time"]), str(e["operator"]), str(e["device"]), str(e["action"]),
            str(e["outcome"]), canonical_text(e["details"]), str(e["prev"]), str(e["hash"]), str(e["sig"]))


REMOVABLE_ROOTS = ("/media", "/run/media", "/mnt")
"""Where desktops (udisks: /media/USER/LABEL, /run/media/USER/LABEL) and technicians (/mnt/usb) mount
USB sticks."""


def removable_mounts(mounts_file: str = "/proc/mounts") -> list[Path]:
    """Mounted file systems under :data:`REMOVABLE_ROOTS` this user may write to: where the TUI offers
    to export (a technician carries the bundle out on a stick). Empty when there is none."""
    import os
    import re

    try:
        text = Path(mounts_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])  # \040 is a space
        if mount in REMOVABLE_ROOTS or not any(mount.startswith(root + "/") for root in REMOVABLE_ROOTS):
            continue
        path = Path(mount)
        if path.is_dir() and os.access(path, os.W_OK):
            found.add(path)
    return sorted(found)
