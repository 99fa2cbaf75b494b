"""The record of a checklist run a plant keeps: ``report.html`` (printable) and a signed ``report.json``.

``write_report(home, run_id, out_dir)`` rebuilds the run from the operator journal and writes:

* ``report.html`` — one self-contained page (inline CSS, no script, no link to anything): the device
  (name, target, host key, hardware, profile), every step with its time, answer and note or reading,
  the health snapshot, bench figures against the budget, the installed versions and digests, the
  operator and the result. Every string is HTML-escaped: a device may send hostile text.
* ``report.json`` — the same content, signed with the operator key::

      {"format": "fieldkit-checklist-report/1", ..., "signer": {"operator", "public_key", "fingerprint"},
       "signature": {"algorithm": "ecdsa-p256-sha256", "sig": base64 DER}}

  The signature covers the canonical JSON (:func:`fieldkit.signing.canonical`) of everything but
  ``signature``; the file is written in one fixed layout (sorted keys, two-space indent), which
  ``verify_report`` requires too, so any changed byte is detected — in a value (the signature no
  longer holds) or in the layout.

``verify_report(path, keys)`` (``fieldkit report verify``) checks it on any machine and names the
signer; with keys it also requires the signer to be one of them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldkit.errors import CheckFailed, ConfigError

__all__ = [
    "FORMAT",
    "ReportError",
    "VerifiedReport",
    "build_report",
    "render_html",
    "report_bytes",
    "verify_report",
    "write_report",
]

FORMAT = "fieldkit-checklist-report/1"
ALGORITHM = "ecdsa-p256-sha256"
MAX_BYTES = 32 << 20


class ReportError(CheckFailed):
    """A report that does not verify (exit 1)."""


@dataclass
class VerifiedReport:
    path: Path
    doc: dict
    signer: str
    operator: str

    def to_json(self) -> dict:
        r = self.doc
        return {"ok": True, "path": str(self.path), "signer": self.signer, "operator": self.operator,
                "run_id": r.get("run", {}).get("run_id"), "checklist": r.get("run", {}).get("checklist"),
                "device": r.get("device", {}).get("name"), "result": r.get("run", {}).get("status")}


def report_bytes(doc: dict) -> bytes:
    """The one layout report.json is written in (and must still be in to verify)."""
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _last(run: Any, key: str) -> tuple[str | None, Any]:
    """The latest reading ``key`` of any step (step id, value)."""
    found: tuple[str | None, Any] = (None, None)
    for st in run.ordered():
        if key in (st.readings or {}) and st.time and (found[0] is None or st.time >= run.steps[found[0]].time):
            found = (st.id, st.readings[key])
    return found


def build_report(home: Any, run_id: str) -> dict:
    """The report's content (unsigned) for run ``run_id``, from the operator journal."""
    from fieldkit.checklists import load_run
    from fieldkit.journal import Journal

    with Journal.open_readonly(home) as journal:
        run = load_run(journal, run_id)
    _, identity = _last(run, "identity")
    _, health = _last(run, "health")
    _, versions = _last(run, "versions")
    _, models = _last(run, "models")
    _, bench = _last(run, "bench")
    _, host_key = _last(run, "host_key")
    ident = identity if isinstance(identity, dict) else {}
    system = (health or {}).get("system") if isinstance(health, dict) else None
    system = system if isinstance(system, dict) else {}
    device = {"name": run.device, "target": run.target, "transport": run.transport, "profile": run.profile,
              "host_key": ident.get("host_key") or (host_key if isinstance(host_key, str) else None),
              "hardware": {k: ident.get(k, system.get(k)) for k in ("hostname", "os", "kernel", "machine")},
              "agent_version": ident.get("agent_version"),
              "hardware_note": "hostname, OS, kernel and machine as the device reports them (no hardware "
                               "serial numbers yet)"}
    steps = []
    for s, st in zip(run.checklist.steps, run.ordered()):
        steps.append({"id": s.id, "kind": s.kind, "what": s.what, "title": s.title, "status": st.status,
                      "time": st.time, "answer": st.answer, "note": st.note, "message": st.message,
                      "readings": st.readings})
    installed = versions.get("models") if isinstance(versions, dict) else models
    return {"format": FORMAT,
            "run": {"run_id": run.run_id, "checklist": run.checklist.name, "title": run.checklist.title,
                    "checklist_sha256": run.checklist.digest, "status": run.status, "reason": run.reason,
                    "stopped_at": run.stopped_at, "started": run.started, "finished": run.finished,
                    "inputs": run.inputs.to_json(), "manifest": run.manifest},
            "operator": run.operator, "device": device, "steps": steps,
            "health": health, "bench": bench, "versions": installed if isinstance(installed, list) else [],
            "journal": {"first_seq": run.entries[0].seq if run.entries else None,
                        "last_seq": run.entries[-1].seq if run.entries else None}}


def _sign(doc: dict, home: Any) -> dict:
    from fieldkit.journal.identity import load_identity
    from fieldkit.signing import canonical, sign_bytes

    ident = load_identity(home)
    body = dict(doc, signer={"operator": ident.name, "public_key": ident.public_key_pem,
                             "fingerprint": ident.fingerprint})
    body["signature"] = {"algorithm": ALGORITHM, "sig": sign_bytes(ident.private_key, canonical(body))}
    return body


def write_report(home: Any, run_id: str, out_dir: Path | str) -> dict:
    """Write ``report.html`` and the signed ``report.json`` into ``out_dir``; journal it
    (``checklist.report``). Returns ``{"run_id", "html", "json", "sha256", "signer", "status"}``."""
    import hashlib

    from fieldkit.fsutil import atomic_write
    from fieldkit.journal import Journal

    doc = _sign(build_report(home, run_id), home)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a directory")
    out.mkdir(parents=True, exist_ok=True)
    data = report_bytes(doc)
    atomic_write(out / "report.json", data)
    atomic_write(out / "report.html", render_html(doc).encode("utf-8"))
    digest = hashlib.sha256(data).hexdigest()
    with Journal.open(home) as journal:
        journal.record(doc["device"]["name"], "checklist.report", "ok",
                       {"run_id": run_id, "checklist": doc["run"]["checklist"], "status": doc["run"]["status"],
                        "dir": str(out.resolve()), "report_sha256": digest})
    return {"run_id": run_id, "html": str(out / "report.html"), "json": str(out / "report.json"),
            "sha256": digest, "signer": doc["signer"]["fingerprint"], "status": doc["run"]["status"]}


# ---- verification ----------------------------------------------------------------------------------------
def verify_report(path: Path | str, keys: Sequence[Path | str | Any] = ()) -> VerifiedReport:
    """Check ``report.json``: its layout, its signature, and (with ``keys``) its signer.
    ReportError (exit 1) says what does not hold; ConfigError (exit 2) for a file that cannot be read."""
    from fieldkit.signing import (
        canonical,
        key_fingerprint,
        load_public_key,
        verify_bytes,
    )

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ReportError(f"{path}: larger than {MAX_BYTES >> 20} MB: not a fieldkit report")
    wanted = [_public_key(k) for k in keys]
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReportError(f"{path}: not JSON ({type(exc).__name__}): the report is damaged or altered") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ReportError(f"{path}: not a fieldkit checklist report (format {FORMAT})")
    signer, sig = doc.get("signer"), doc.get("signature")
    if not isinstance(signer, dict) or not isinstance(sig, dict) or not isinstance(sig.get("sig"), str):
        raise ReportError(f"{path}: not signed (no signer or signature)")
    if sig.get("algorithm") != ALGORITHM:
        raise ReportError(f"{path}: signature algorithm {str(sig.get('algorithm'))[:40]!r}: expected {ALGORITHM}")
    try:
        pub = load_public_key(str(signer.get("public_key") or ""))
    except (ValueError, TypeError):
        raise ReportError(f"{path}: signer.public_key is not an ECDSA P-256 public key") from None
    fp = key_fingerprint(pub)
    if signer.get("fingerprint") != fp:
        raise ReportError(f"{path}: signer.fingerprint does not match the public key inside (it is {fp}): altered")
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        signed = canonical(body)
    except (TypeError, ValueError):
        raise ReportError(f"{path}: holds values that cannot be signed: altered") from None
    if not verify_bytes(pub, signed, sig["sig"]):
        raise ReportError(f"{path}: the signature does not verify: the report was altered after {fp} signed it")
    if report_bytes(doc) != raw:
        raise ReportError(f"{path}: the signed content holds, but the file is not byte for byte as written "
                          f"(signed by {fp}): altered")
    if wanted and fp not in {key_fingerprint(k) for k in wanted}:
        raise ReportError(f"{path}: signed by {fp} ({signer.get('operator')}), not by the key given "
                          f"({', '.join(key_fingerprint(k) for k in wanted)})")
    return VerifiedReport(path, doc, fp, str(signer.get("operator") or ""))


def _public_key(key: Any) -> Any:
    from fieldkit.signing import load_public_key

    if not isinstance(key, (str, Path)):
        return key
    p = Path(key)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--key {p}: cannot read: {exc.strerror or exc}") from None
    try:
        return load_public_key(raw[:16384])
    except (ValueError, TypeError):
        raise ConfigError(f"--key {p}: not an ECDSA P-256 public key (give the .pub.pem, e.g. the operator's "
                          "public key from `fieldkit audit status`)") from None


# ---- HTML ---------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em;color:#111;font-size:11pt}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #999}
table{border-collapse:collapse;width:100%;margin:.3em 0}th,td{border:1px solid #bbb;padding:.25em .45em;
text-align:left;vertical-align:top}th{background:#eee}td.k{width:14em;font-weight:600}
.passed,.ok,.pass{color:#065f2c;font-weight:700}.failed,.crit,.fail,.drift,.modified,.missing{color:#a10000;font-weight:700}
.warn,.skipped,.unexpected,.stopped,.unanswered,.interrupted{color:#8a5a00;font-weight:700}
.result{font-size:1.3em;padding:.4em .6em;border:2px solid #333;display:inline-block;margin:.4em 0}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;word-break:break-all}
.small{color:#444;font-size:.9em}
@media print{body{margin:1cm}h2{break-after:avoid}tr{break-inside:avoid}}
"""


def _e(value: Any) -> str:
    if value is None or value == "":
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return html.escape(str(value), quote=True)


def _cls(status: Any) -> str:
    return html.escape(str(status or ""), quote=True).replace(" ", "-")


def _kv(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f'<tr><td class="k">{_e(k)}</td><td>{_e(v)}</td></tr>' for k, v in rows) + "</table>"


def _step_detail(s: dict) -> str:
    parts = []
    if s.get("kind") == "confirm":
        parts.append(f"answer: {_e(s.get('answer'))}" if s.get("answer") is not None else "no answer")
        if s.get("note"):
            parts.append(f"note: {_e(s['note'])}")
    if s.get("message"):
        parts.append(_e(s["message"]))
    readings = s.get("readings") or {}
    if readings:
        parts.append('<span class="small">readings: ' + ", ".join(_e(k) for k in sorted(readings)) + "</span>")
    return "<br>".join(parts)


def render_html(doc: dict) -> str:
    """The printable page (self-contained: inline CSS, nothing fetched, every text escaped)."""
    run, dev = doc.get("run") or {}, doc.get("device") or {}
    hw = dev.get("hardware") or {}
    signer = doc.get("signer") or {}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
           f"<title>{_e(run.get('title'))} &mdash; {_e(dev.get('name'))}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_e(run.get('title'))}</h1>",
           f'<div class="result {_cls(run.get("status"))}">Result: {_e(run.get("status"))}</div>']
    if run.get("reason"):
        out.append(f"<p>{_e(run.get('reason'))}</p>")
    out.append("<h2>Run</h2>" + _kv([
        ("Run id", run.get("run_id")), ("Checklist", f"{run.get('checklist')} (sha256 {str(run.get('checklist_sha256'))[:16]}...)"),
        ("Operator", doc.get("operator")), ("Started", run.get("started")), ("Finished", run.get("finished")),
        ("Release", (run.get("inputs") or {}).get("release")), ("Model", (run.get("inputs") or {}).get("model")),
        ("Site manifest", ((run.get("manifest") or {}).get("path") if run.get("manifest") else None)),
        ("Manifest signer", ((run.get("manifest") or {}).get("signer") if run.get("manifest") else None))]))
    out.append("<h2>Device</h2>" + _kv([
        ("Name", dev.get("name")), ("Target", dev.get("target")), ("Transport", dev.get("transport")),
        ("Host key", dev.get("host_key")), ("Profile", dev.get("profile")), ("Hostname", hw.get("hostname")),
        ("OS", hw.get("os")), ("Kernel", hw.get("kernel")), ("Machine", hw.get("machine")),
        ("Agent", dev.get("agent_version"))]))
    out.append(f'<p class="small">{_e(dev.get("hardware_note"))}</p>')
    out.append("<h2>Steps</h2><table><tr><th>#</th><th>Step</th><th>Status</th><th>Time (UTC)</th><th>Answer, reading</th></tr>")
    for i, s in enumerate(doc.get("steps") or [], 1):
        out.append(f"<tr><td>{i}</td><td>{_e(s.get('title'))}<br><span class=\"small mono\">{_e(s.get('id'))} "
                   f"({_e(s.get('kind'))}{(' ' + _e(s.get('what'))) if s.get('what') else ''})</span></td>"
                   f'<td class="{_cls(s.get("status"))}">{_e(s.get("status"))}</td><td class="mono">{_e(s.get("time"))}</td>'
                   f"<td>{_step_detail(s)}</td></tr>")
    out.append("</table>")
    health = doc.get("health")
    if isinstance(health, dict):
        out.append(f'<h2>Health snapshot: <span class="{_cls(health.get("status"))}">{_e(health.get("status"))}</span></h2>'
                   "<table><tr><th>Check</th><th>Status</th><th>Reading</th></tr>")
        for c in health.get("checks") or []:
            if isinstance(c, dict):
                out.append(f"<tr><td>{_e(c.get('name'))}</td><td class=\"{_cls(c.get('status'))}\">{_e(c.get('status'))}"
                           f"</td><td>{_e(c.get('message'))}</td></tr>")
        out.append("</table>")
    bench = doc.get("bench")
    if isinstance(bench, dict):
        out.append("<h2>Benchmark</h2>" + _kv([
            ("Model", bench.get("model")), ("Use case", bench.get("use_case")),
            ("Budget", f"{bench.get('budget_ms')} ms ({bench.get('metric')})" if bench.get("budget_ms") else None),
            ("Timed runs", bench.get("runs")), ("p50 / p90 / p99 ms",
                                                f"{bench.get('p50_ms')} / {bench.get('p90_ms')} / {bench.get('p99_ms')}"),
            ("Verdict", bench.get("verdict")), ("Reasons", "; ".join(map(str, bench.get("reasons") or [])) or None),
            ("Bench report", bench.get("report_id"))]))
    versions = doc.get("versions") or []
    out.append("<h2>Installed versions</h2>")
    if versions:
        out.append("<table><tr><th>Model</th><th>Active</th><th>Expected</th><th>Status</th><th>Digest</th></tr>")
        for m in versions:
            if isinstance(m, dict):
                digest = m.get("active_digest") or m.get("digest")
                out.append(f"<tr><td>{_e(m.get('name'))}</td><td>{_e(m.get('active'))}</td><td>{_e(m.get('expected'))}</td>"
                           f"<td class=\"{_cls(m.get('status') or m.get('state'))}\">{_e(m.get('status') or m.get('state'))}"
                           f"</td><td class=\"mono\">{_e(digest)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No versions were recorded in this run.</p>")
    out.append("<h2>Signature</h2>" + _kv([
        ("Signed by", signer.get("operator")), ("Key fingerprint", signer.get("fingerprint")),
        ("Check", "fieldkit report verify report.json --key OPERATOR.pub.pem")]))
    out.append("</body></html>")
    return "\n".join(out) + "\n"
