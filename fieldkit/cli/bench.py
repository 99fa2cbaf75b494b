"""`fieldkit bench`: benchmark a model on a device, list saved reports, compare two of them.

    fieldkit bench TARGET MODEL [options]   run on the device and judge (exit 1 on fail)
    fieldkit bench list [--json]            saved reports
    fieldkit bench compare A B [--json]     two reports side by side with deltas

The work is done by :mod:`fieldkit.bench`; this module parses options, shows progress on stderr
and prints the result.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from fieldkit.cli.common import emit_json
from fieldkit.errors import Cancelled, ConfigError, LinkLost
from fieldkit.textfmt import human_bytes, table, transfer_text, use_color

USAGE = """fieldkit bench TARGET MODEL [options]
       fieldkit bench list [--json]
       fieldkit bench compare A B [--json]"""

DESCRIPTION = """\
Benchmark an ONNX model on a device, in a process of its own there, and judge the result against
the device profile and a use case's latency budget (pass / warn / fail; exit 1 on fail).

MODEL is a local .onnx file, a local model directory (release.json + .onnx), or
installed:NAME[@VERSION] for a model already installed on the device. Local files are copied once
to a content-addressed bench cache on the device and reused afterwards.

Reports are saved under FIELDKIT_HOME/reports/; `bench list` shows them and `bench compare A B`
(report files or ids) puts two side by side, e.g. the fp32 and int8 variants on one device.
Ctrl-C stops the benchmark on the device.
"""

EPILOG = """\
percentiles use the nearest-rank rule (always a measured run); p90 early stopping is MLPerf's
SingleStream estimate and needs 64+ runs (`valid`).
exit codes: 0 pass or warn, 1 fail, 2 usage or configuration, 3 connection, 4 the device failed
the benchmark (bad model, shape mismatch, no onnxruntime), 130 cancelled.
"""


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("bench", help="benchmark a model on a device; list or compare saved reports",
                              usage=USAGE, description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("words", nargs="+", metavar="TARGET MODEL | list | compare A B",
                   help="device (inventory name or target) and model; or `list`; or `compare A B`")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--runs", type=int, metavar="N", help="stop after N timed runs")
    how.add_argument("--duration", type=float, metavar="S", help="run for S seconds (default 20) and at least "
                     "--min-runs runs")
    how.add_argument("--sustained", action="store_true", help="a sustained run of 600 s (MLPerf's minimum)")
    s.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed warm-up runs (default 10)")
    s.add_argument("--min-runs", type=int, default=64, metavar="N",
                   help="with a duration, keep going until N runs (default 64, MLPerf's p90 minimum)")
    s.add_argument("--max-seconds", type=float, metavar="S",
                   help="hard limit on the timed loop (default 3 x duration + 60 s; 120 s with --runs)")
    s.add_argument("--threads", type=int, default=0, metavar="N",
                   help="onnxruntime intra-op threads (default 0: one per physical core)")
    s.add_argument("--rate", type=float, metavar="HZ", help="pace runs at HZ per second and count missed deadlines")
    s.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                   help="concrete shape for an input with symbolic dims, e.g. input=1x3x224x224 (repeatable)")
    s.add_argument("--inputs", type=Path, metavar="FILE.npz", help="input arrays by input name (uploaded too; "
                   "default: seeded random data)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    s.add_argument("--spin", choices=("on", "off"), default="on",
                   help="let onnxruntime's threads spin between runs (default on, onnxruntime's default)")
    s.add_argument("--provider", action="append", default=[], metavar="P",
                   help="execution provider, in priority order (repeatable; default CPUExecutionProvider)")
    s.add_argument("--use-case", metavar="NAME", help="judge against this use case of the device profile")
    s.add_argument("--budget-ms", type=float, metavar="MS", help="latency budget in ms (p99 unless --use-case "
                   "sets the metric; overrides the use case's budget)")
    s.add_argument("--profile", help="judge against this profile instead of the device's")
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.add_argument("--report", type=Path, metavar="FILE", help="also write the JSON report to FILE")
    s.add_argument("--no-save", action="store_true", help="do not keep the report under FIELDKIT_HOME/reports")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    s.add_argument("--timeout", type=float, default=15.0, help="connect timeout in seconds (default 15)")
    s.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace, home: Any) -> int:
    """``bench TARGET MODEL``, unless the first word is one of :data:`ACTIONS` (``list``, ``compare``).

    Those words are reserved: no device may be named after them (``fieldkit.inventory.RESERVED_DEVICE_NAMES``).
    """
    word, *operands = args.words
    action = ACTIONS.get(word)
    if action is not None:
        handler, arity, usage = action
        if len(operands) != arity:
            raise ConfigError(usage)
        return handler(args, home, *operands)
    if len(operands) != 1:
        raise ConfigError("usage: fieldkit bench TARGET MODEL [options]  (or: bench list, bench compare A B)")
    return cmd_bench_run(args, home, word, operands[0])


# ---- run ------------------------------------------------------------------------------------------
def settings_from_args(args: argparse.Namespace) -> Any:
    from fieldkit.bench import BenchSettings, parse_shape

    shapes: dict[str, list[int]] = {}
    for text in args.shape:
        name, dims = parse_shape(text)
        shapes[name] = dims
    return BenchSettings(
        warmup=args.warmup, runs=args.runs, duration_s=args.duration, sustained=args.sustained,
        min_runs=args.min_runs, max_seconds=args.max_seconds, threads=args.threads, rate_hz=args.rate,
        shapes=shapes, inputs=args.inputs, seed=args.seed, spin=args.spin, providers=list(args.provider),
    )


class ProgressLine:
    """Progress on stderr: one line rewritten in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, every_s: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.quiet = quiet
        self.every_s = every_s
        self._last = 0.0
        self._last_phase = None
        self._shown = False
        self._lock = threading.Lock()

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        text = self.render(ev)
        if not text:
            return
        with self._lock:
            now = time.monotonic()
            phase = ev.get("phase")
            if self.tty:
                self.stream.write("\r\x1b[K" + text[:200])
                self._shown = True
            elif (phase != self._last_phase or now - self._last >= self.every_s or phase in ("done",)
                  or (phase == "upload" and ev.get("bytes_total") and ev.get("bytes_done") == ev["bytes_total"])):
                self.stream.write(text + "\n")
                self._last = now
            else:
                return
            self._last_phase = phase
            self.stream.flush()

    def clear(self) -> None:
        with self._lock:
            if self.tty and self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False

    @staticmethod
    def render(ev: dict) -> str:
        from fieldkit.benchreport import fmt_ms

        phase = ev.get("phase")
        if phase == "upload":
            done, total = ev.get("bytes_done") or 0, ev.get("bytes_total") or 0
            return f"uploading {ev.get('what', 'file')}: " + transfer_text(done, total, ev.get("rate_bps"), ev.get("eta_s"))
        if phase in ("connect", "resolve", "starting", "started"):
            return str(ev.get("message") or phase)
        if phase == "warmup":
            return f"warm-up {ev.get('runs')}/{ev.get('runs_target')}, last {fmt_ms(ev.get('last_ms'))}"
        if phase == "run":
            target = ev.get("runs_target")
            runs = f"{ev.get('runs')}/{target}" if target else f"{ev.get('runs')}"
            parts = [f"run {runs}", f"p50 {fmt_ms(ev.get('p50_ms'))}", f"p99 {fmt_ms(ev.get('p99_ms'))}"]
            if ev.get("temp_c") is not None:
                parts.append(f"{ev['temp_c']:.0f} °C")
            frac = ev.get("fraction")
            if frac is not None:
                parts.append(f"{100 * frac:.0f} %")
            if ev.get("eta_s") is not None:
                parts.append(f"ETA {ev['eta_s']:.0f} s")
            return " · ".join(parts)
        return ""


def cmd_bench_run(args: argparse.Namespace, home: Any, target: str, model_text: str) -> int:
    from fieldkit.bench import parse_model_spec, run_bench
    from fieldkit.benchreport import save_report
    from fieldkit.devices import resolve

    settings = settings_from_args(args)
    spec = parse_model_spec(model_text)
    dev = resolve(target, home, args.profile)
    if args.use_case:
        dev.profile.use_case(args.use_case)  # unknown use case: ConfigError listing them, before connecting
    if args.budget_ms is not None and not args.budget_ms > 0:
        raise ConfigError(f"--budget-ms must be a positive number of milliseconds, got {args.budget_ms:g}")

    show = ProgressLine(quiet=args.quiet)
    cancel = threading.Event()
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["report"] = run_bench(dev, spec, settings, profile=dev.profile, use_case=args.use_case,
                                      budget_ms=args.budget_ms, progress=show, cancel=cancel, home=home,
                                      connect_timeout=args.timeout)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc
        finally:
            done.set()

    # The run happens in a worker so that Ctrl-C (KeyboardInterrupt, main thread only) can ask the
    # device to stop and then wait for its answer. (Not Thread.join: an interrupted join can make
    # is_alive() report a running thread as finished.)
    threading.Thread(target=work, name="bench", daemon=True).start()
    interrupted = False
    while not done.is_set():
        try:
            done.wait(0.2)
        except KeyboardInterrupt:
            show.clear()
            if interrupted:
                print("fieldkit: not waiting any longer; the agent ends the benchmark when the link closes",
                      file=sys.stderr)
                return 130
            interrupted = True
            show.quiet = True
            cancel.set()
            print("fieldkit: stopping the benchmark on the device (Ctrl-C again to quit at once) ...",
                  file=sys.stderr, flush=True)
    show.clear()
    err = box.get("error")
    if err is not None:
        if isinstance(err, Cancelled) or (interrupted and isinstance(err, LinkLost)):
            msg = str(err) if isinstance(err, Cancelled) else (
                f"benchmark on {dev.name} cancelled; the link closed while stopping, and the agent ends the "
                "benchmark process when its session ends")
            print(f"fieldkit: {msg}", file=sys.stderr)
            return 130
        raise err
    report = box["report"]
    if not args.no_save:
        save_report(home, report)
    if args.report:
        from fieldkit.fsutil import atomic_write_json

        atomic_write_json(args.report, report.to_json())
    if args.json:
        emit_json(report.to_json())
    else:
        print(render_report(report))
    return report.exit_code


def render_report(report: Any) -> str:
    from fieldkit.benchreport import fmt_ms

    color = use_color()
    d = report.to_json()
    lat = d.get("latency_ms") or {}
    m = d.get("model") or {}
    s = d.get("settings") or {}
    out = []
    shown_name = Path(m.get("path") or "").name or m.get("name")
    how = f"{d.get('runs')} runs in {d.get('duration_s') or 0:.1f} s"
    threads = s.get("threads") or "default"
    out.append(f"{shown_name} on {report.device} ({report.profile}) — {how}, threads {threads}, spin {s.get('spin')}, "
               f"{', '.join(s.get('providers_active') or s.get('providers') or [])}"
               + (f", paced at {s['rate_hz']:g} Hz" if s.get("rate_hz") else ""))
    where = {True: "uploaded to the device's bench cache", False: "already in the device's bench cache",
             None: f"installed on the device, version {m.get('version')}"}[m.get("uploaded")]
    out.append(f"model sha256 {str(m.get('sha256'))[:16]}…, {human_bytes(m.get('size_bytes'))}, {where}")
    out.append("")
    cols = ["min", "mean", "p50", "p90", "p95", "p99", "max"]
    headers = ["LATENCY"] + cols + ["p90 early stop"]
    es = d.get("p90_early_stopping_ms")
    row = ["ms"] + [_num(lat.get(c)) for c in cols] + [_num(es) if es is not None else "needs 64 runs"]
    out.append(table(headers, [row]))
    out.append("")
    mem = d.get("memory") or {}
    out.append(f"session create {fmt_ms(d.get('session_create_ms'))} · first run {fmt_ms(d.get('first_run_ms'))} · "
               f"throughput {d.get('throughput_ips') or 0:.1f}/s · CPU {d.get('cpu_percent') or 0:.0f} % · "
               f"peak RSS {human_bytes(d.get('peak_rss_bytes'))}")
    swaps = (mem.get("swap_in_pages") or 0) + (mem.get("swap_out_pages") or 0)
    out.append(f"lowest free memory {human_bytes(mem.get('available_min'))} · swap "
               + ("none" if not swaps else f"{mem.get('swap_in_pages')} pages in, {mem.get('swap_out_pages')} out"))
    temps = d.get("thermal") or {}
    if temps:
        out.append("temperature " + ", ".join(f"{z} {t['start']:.0f}→{t['max']:.0f} °C" for z, t in sorted(temps.items())))
    if s.get("rate_hz"):
        out.append(f"deadline misses {d.get('deadline_misses')} at {s['rate_hz']:g} Hz ({d.get('late_runs')} late runs)")
    out.append("")
    budget = (f" — {report.metric} budget {report.budget_ms:g} ms"
              + (f" ({report.use_case})" if report.use_case else "")) if report.budget_ms else ""
    v = report.verdict
    out.append(f"verdict: {verdict_text(v.status, color)}{budget}")
    for reason in v.reasons:
        out.append(f"  - {reason}")
    if v.status == "pass":
        latency = next((c for c in v.checks if c.name == "latency"), None)
        if latency:
            out.append(f"  {latency.message}")
    if report.path:
        out.append(f"report saved as {report.id} ({report.path})")
    return "\n".join(out)


_VERDICT_COLORS = {"pass": "32;1", "warn": "33;1", "fail": "31;1"}


def verdict_text(status: str, color: bool) -> str:
    label = status.upper()
    code = _VERDICT_COLORS.get(status)
    return f"\x1b[{code}m{label}\x1b[0m" if color and code else label


def _num(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3g}"


# ---- list / compare -------------------------------------------------------------------------------
def cmd_bench_list(args: argparse.Namespace, home: Any) -> int:
    from fieldkit.benchreport import list_reports

    reports = list_reports(home)
    if args.json:
        emit_json({"reports": [{
            "id": r.id, "path": str(r.path), "created_at": r.created_at, "device": r.device,
            "model": r.model.get("name"), "sha256": r.model.get("sha256"), "runs": r.result.get("runs"),
            "p50_ms": (r.result.get("latency_ms") or {}).get("p50"),
            "p99_ms": (r.result.get("latency_ms") or {}).get("p99"),
            "use_case": r.use_case, "verdict": r.verdict.status} for r in reports]})
        return 0
    if not reports:
        print(f"no saved bench reports in {home.reports_dir}; run `fieldkit bench TARGET MODEL`")
        return 0
    color = use_color()
    rows = [[r.id, r.created_at.replace("T", " ")[:19], r.device, r.model.get("name"), r.result.get("runs"),
             _num((r.result.get("latency_ms") or {}).get("p50")), _num((r.result.get("latency_ms") or {}).get("p99")),
             r.use_case or "-", verdict_text(r.verdict.status, color)] for r in reports]
    print(table(["ID", "WHEN (UTC)", "DEVICE", "MODEL", "RUNS", "P50 MS", "P99 MS", "USE CASE", "VERDICT"], rows))
    return 0


def cmd_bench_compare(args: argparse.Namespace, home: Any, ref_a: str, ref_b: str) -> int:
    from fieldkit.benchreport import compare, load_report

    a, b = load_report(home, ref_a), load_report(home, ref_b)
    rows = compare(a, b)
    if args.json:
        emit_json({
            "a": {"id": a.id, "path": str(a.path), "device": a.device, "model": a.model.get("name")},
            "b": {"id": b.id, "path": str(b.path), "device": b.device, "model": b.model.get("name")},
            "rows": [r.__dict__ for r in rows]})
        return 0
    print(f"A  {a.id}: {a.model.get('name')} on {a.device}")
    print(f"B  {b.id}: {b.model.get('name')} on {b.device}")
    print()
    out = []
    for r in rows:
        delta = "" if r.delta_pct is None else f"{r.delta_pct:+.1f} %"
        if r.better:
            delta += f"  ({r.better.upper()} better)"
        out.append([r.metric, _cell(r.a, r.unit), _cell(r.b, r.unit), delta])
    print(table(["", "A", "B", "B vs A"], out))
    return 0


def _cell(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if unit == "bytes":
        return human_bytes(v)
    if unit == "ms":
        return f"{_num(v)} ms"
    if unit in ("%", "°C", "/s", "Hz"):
        return f"{v:.1f} {unit}" if unit != "/s" else f"{v:.1f}/s"
    return f"{v:g}"


# The words that take the TARGET position: handler, number of operands, usage shown when it is wrong.
ACTIONS: dict[str, tuple[Callable[..., int], int, str]] = {
    "list": (cmd_bench_list, 0, "usage: fieldkit bench list [--json]"),
    "compare": (cmd_bench_compare, 2, "usage: fieldkit bench compare A B  (report files or ids; "
                                      "`fieldkit bench list` shows them)"),
}
