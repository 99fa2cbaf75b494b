"""Benchmark one ONNX model on the device and stream the results as JSON lines.

Runs on the device (stdlib + numpy + onnxruntime, Python 3.6 syntax). The agent starts it as a
process of its own, ``python <agent> bench --settings-json '{"model": M, ...}'`` (settings
declared once in :data:`fieldkit.agent.benchsettings.SETTINGS` and checked by the agent before it
starts this process; by hand the same settings are flags, ``--model M --runs 50 ...``, or run
``python -m fieldkit.agent.benchrun``), and reads its stdout: one JSON object per line, flushed.

    {"event": "started", ...}    model (path, sha256, size), concrete input shapes, settings
    {"event": "progress", ...}   about every progress_interval_s seconds (phase warmup | run)
    {"event": "result", ...}     the measurement, then exit status 0
    {"event": "error", "code": ..., "message": ...}   instead of a result, then exit status 2

Method (docs: REFERENCE.md "On-device benchmarking"): the session is created with explicit
``providers=``, ``intra_op_num_threads`` and ``session.intra_op.allow_spinning`` and graph
optimisation level ALL. Warm-up runs come first; the very first run is reported on its own as
``first_run_ms`` (allocation and weight prepacking make it slow, as onnxruntime_perf_test shows).
Each timed run is measured with ``time.perf_counter_ns()`` with the garbage collector disabled
around the timed loop; nothing else happens between runs except bookkeeping and a progress line
every ~0.5 s. A sampler thread reads /proc/meminfo, thermal zones and cpufreq every ~200 ms.

Without ``rate_hz`` the next run starts when the previous one finishes (MLPerf SingleStream).
With ``rate_hz`` HZ run i is scheduled at t0 + i/HZ (TFLite ``run_frequency``); a run that ends
after the next slot misses it, and the loop skips to the first slot still in the future, counting
every skipped slot in ``deadline_misses`` (no catch-up bursts).

Stopping: with ``runs`` N after N timed runs; otherwise once ``duration_s`` seconds have passed
and at least ``min_runs`` runs were made. ``max_seconds`` (default 3 x duration + 60) stops
the timed loop in every mode; ``stop_reason`` says which rule ended it.

Cancellation: SIGTERM, SIGINT or SIGHUP (the last two unless inherited as ignored, as under
nohup) stop the benchmark promptly, even in the middle of a long inference: the signal wakes the
sampler thread, which sets onnxruntime's ``RunOptions.terminate``. The process then prints
``{"event": "error", "code": "cancelled", "runs": n, ...}`` with no partial result, and exits
with status 2 like every other error. It never starts children other than a short-lived
``vcgencmd`` on Raspberry Pi (waited for, with a timeout).

Error codes: bad_arguments, model_not_found, model_unreadable, invalid_model, unsupported_model,
session_failed, onnxruntime_missing, onnxruntime_broken, numpy_missing, unknown_provider,
provider_failed, bad_shape, shape_mismatch, unsupported_input, inputs_not_found, inputs_invalid,
inputs_missing, inputs_dtype, run_failed, cancelled, internal.

The parts: :mod:`.benchsettings` (the settings table, checks and flags), :mod:`.benchsession`
(model, session, inputs), :mod:`.benchwatch` (sampler thread, device readings, cancel signals);
this module runs the warm-up and the timed loop and assembles the result.
"""

import gc
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional

from fieldkit.agent import stats
from fieldkit.agent.benchsession import (create_session, import_runtime, model_facts, ort_detail,
                                         perf_counter_ns, prepare_inputs, process_time_ns)
from fieldkit.agent.benchsettings import BenchError, parse_args
from fieldkit.agent.benchwatch import (Cancelled, CancelState, Sampler, decode_throttle, install_signals,
                                       peak_rss_bytes, swap_counters, vcgencmd_throttled)

EXIT_OK = 0
EXIT_ERROR = 2
PROGRESS_WINDOW = 4096  # progress percentiles cover the most recent runs
HISTOGRAM_BUCKETS = 40


class OutputClosed(Exception):
    """Whoever reads our stdout has gone away (SSH session closed)."""


# --- output --------------------------------------------------------------------------------------

class Output:
    def __init__(self, stream):
        self.stream = stream

    def emit(self, obj):
        # type: (Dict[str, Any]) -> None
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError; ValueError: stdout already closed
            raise OutputClosed(str(exc))

# --- the benchmark -------------------------------------------------------------------------------

def _pctl_ms(values, q):
    return round(stats.percentile(values, q) / 1e6, 4)


class Bench:
    def __init__(self, args, out, state, wakeup_fd=None, clock=None, sleep=None):
        """``clock`` (nanoseconds, default ``time.perf_counter_ns``) and ``sleep`` (seconds, default
        ``time.sleep``) drive the timed loop's pacing: tests replace them with a virtual clock, so
        the scheduling is checked exactly, whatever the load of the machine running them."""
        self.args = args
        self.out = out
        self.state = state
        self.wakeup_fd = wakeup_fd
        self.clock = clock or perf_counter_ns
        self.sleep = sleep or time.sleep
        self.sampler = None  # type: Optional[Sampler]
        self.runs_done = 0

    def run(self):
        # type: () -> Dict[str, Any]
        args, state = self.args, self.state
        facts = model_facts(args.model)
        np, ort = import_runtime()
        state.check()
        swap_start = swap_counters()
        throttle_start = vcgencmd_throttled()
        self.sampler = Sampler(wakeup_fd=self.wakeup_fd, on_signal=state.cancel)
        self.sampler.start()
        try:
            sess, create_ms = create_session(ort, args, facts)
            state.check()
            feeds, described = prepare_inputs(np, sess, args)
            ro = ort.RunOptions()
            state.run_options = ro
            state.check()
            settings = {
                "warmup": max(1, args.warmup),
                "runs": args.runs,
                "duration_s": None if args.runs else args.duration_s,
                "min_runs": None if args.runs else args.min_runs,
                "max_seconds": args.max_seconds,
                "threads": args.threads,
                "spin": args.spin,
                "providers": list(args.providers),
                "rate_hz": args.rate_hz,
                "inputs": os.path.abspath(args.inputs) if args.inputs else "random(seed=%d)" % args.seed,
                "graph_optimization": "all",
                "progress_interval_s": args.progress_interval_s,
            }
            self.out.emit({
                "event": "started",
                "pid": os.getpid(),
                "model": facts,
                "inputs": described,
                "outputs": [{"name": o.name, "shape": list(o.shape), "type": o.type} for o in sess.get_outputs()],
                "settings": settings,
                "session_create_ms": round(create_ms, 3),
                "onnxruntime": ort.__version__,
                "providers": list(sess.get_providers()),
                "python": platform.python_version(),
                "machine": platform.machine(),
            })
            first_ms = self.warmup(sess, feeds, ro)
            loop = self.timed_loop(sess, feeds, ro)
        finally:
            self.sampler.stop()
        throttle_end = vcgencmd_throttled() if throttle_start is not None else None
        swap_end = swap_counters()
        lat = loop["latencies"]
        p90_es, valid, need90 = stats.early_stopping_percentile(lat, 0.90)
        p99_es, _, need99 = stats.early_stopping_percentile(lat, 0.99)
        sampled = self.sampler.report()
        duration_s = loop["wall_ns"] / 1e9

        def delta(key):
            a, b = swap_start.get(key), swap_end.get(key)
            return None if a is None or b is None else b - a

        memory = dict(sampled["memory"])
        memory["swap_in_pages"] = delta("pswpin")
        memory["swap_out_pages"] = delta("pswpout")
        return {
            "event": "result",
            "model": facts,
            "session_create_ms": round(create_ms, 3),
            "first_run_ms": round(first_ms, 4),
            "warmup_runs": max(1, args.warmup),
            "runs": len(lat),
            "duration_s": round(duration_s, 4),
            "stop_reason": loop["stop_reason"],
            "latency_ms": stats.summary(lat),
            "p90_early_stopping_ms": p90_es,
            "p99_early_stopping_ms": p99_es,
            "valid": valid,
            "early_stopping_min_runs": {"p90": need90, "p99": need99},
            "throughput_ips": round(len(lat) / duration_s, 3) if duration_s > 0 else None,
            "cpu_percent": round(100.0 * loop["cpu_ns"] / loop["wall_ns"], 1) if loop["wall_ns"] > 0 else None,
            "peak_rss_bytes": peak_rss_bytes(),
            "memory": memory,
            "thermal": sampled["thermal"],
            "cpufreq": sampled["cpufreq"],
            "throttle": decode_throttle(throttle_start, throttle_end),
            "rate_hz": args.rate_hz,
            "deadline_misses": loop["misses"] if args.rate_hz else 0,
            "late_runs": loop["late_runs"] if args.rate_hz else 0,
            "latencies_ms": stats.log_histogram(lat, HISTOGRAM_BUCKETS),
            "settings": {"threads": args.threads, "spin": args.spin, "providers": list(sess.get_providers())},
            "onnxruntime": ort.__version__,
        }

    def _call(self, sess, feeds, ro):
        try:
            sess.run(None, feeds, ro)
        except Exception as exc:
            if self.state.cancelled:
                raise Cancelled()
            raise BenchError("run_failed", "inference failed on %s (%s)" % (os.path.basename(self.args.model),
                                                                           ort_detail(exc)))

    def warmup(self, sess, feeds, ro):
        # type: (Any, Dict[str, Any], Any) -> float
        n = max(1, self.args.warmup)
        interval = int(self.args.progress_interval_s * 1e9)
        start = perf_counter_ns()
        next_progress = start + interval
        first_ms = 0.0
        for i in range(n):
            a = perf_counter_ns()
            self._call(sess, feeds, ro)
            b = perf_counter_ns()
            if i == 0:
                first_ms = (b - a) / 1e6
            self.state.check()
            if b >= next_progress:
                self.out.emit({"event": "progress", "phase": "warmup", "runs": i + 1, "elapsed_s": round((b - start) / 1e9, 3),
                               "eta_s": round((n - i - 1) * (b - start) / (i + 1) / 1e9, 2), "p50_ms": None,
                               "p90_ms": None, "p99_ms": None, "last_ms": round((b - a) / 1e6, 4),
                               "temp_c": self.sampler.temp_now if self.sampler else None})
                next_progress = b + interval
        return first_ms

    def _sleep_until(self, target_ns):
        # type: (int) -> None
        while True:
            left = target_ns - self.clock()
            if left <= 0 or self.state.cancelled:
                return
            self.sleep(min(left / 1e9, 0.05))

    def timed_loop(self, sess, feeds, ro):
        # type: (Any, Dict[str, Any], Any) -> Dict[str, Any]
        args, state, out = self.args, self.state, self.out
        runs_target = args.runs
        duration_ns = int(args.duration_s * 1e9)
        max_ns = int(args.max_seconds * 1e9)
        min_runs = args.min_runs
        interval = int(args.progress_interval_s * 1e9)
        period = int(round(1e9 / args.rate_hz)) if args.rate_hz else 0
        lat = []  # type: List[int]
        append = lat.append
        clock = self.clock
        run = sess.run
        misses = late_runs = 0
        slot = 0
        stop_reason = None
        gc.collect()
        gc.disable()
        try:
            cpu0 = process_time_ns()
            t0 = clock()
            next_progress = t0 + interval
            end = t0
            while True:
                if period:
                    self._sleep_until(t0 + slot * period)
                a = clock()
                try:
                    run(None, feeds, ro)
                except Exception as exc:
                    if state.cancelled:
                        raise Cancelled()
                    raise BenchError("run_failed", "inference failed on %s after %d runs (%s)" % (
                        os.path.basename(args.model), len(lat), ort_detail(exc)))
                end = clock()
                append(end - a)
                if period:
                    slot += 1
                    if end > t0 + slot * period:
                        # missed the next slot: skip to the first slot still ahead, no catch-up burst
                        late_runs += 1
                        nxt = -(-(end - t0) // period)
                        misses += nxt - slot
                        slot = nxt
                self.runs_done = n = len(lat)
                if state.cancelled:
                    raise Cancelled()
                elapsed = end - t0
                if runs_target is not None:
                    if n >= runs_target:
                        stop_reason = "runs"
                        break
                elif elapsed >= duration_ns and n >= min_runs:
                    stop_reason = "duration"
                    break
                if elapsed >= max_ns:
                    stop_reason = "max_seconds"
                    break
                if end >= next_progress:
                    window = sorted(lat[-PROGRESS_WINDOW:])
                    out.emit({
                        "event": "progress", "phase": "run", "runs": n, "elapsed_s": round(elapsed / 1e9, 3),
                        "eta_s": self._eta(n, elapsed), "p50_ms": _pctl_ms(window, 0.5),
                        "p90_ms": _pctl_ms(window, 0.9), "p99_ms": _pctl_ms(window, 0.99),
                        "last_ms": round(lat[-1] / 1e6, 4), "temp_c": self.sampler.temp_now if self.sampler else None,
                    })
                    next_progress = clock() + interval
            wall = end - t0
            cpu = process_time_ns() - cpu0
        finally:
            gc.enable()
        return {"latencies": lat, "wall_ns": wall, "cpu_ns": cpu, "misses": misses, "late_runs": late_runs,
                "stop_reason": stop_reason}

    def _eta(self, n, elapsed_ns):
        # type: (int, int) -> Optional[float]
        args = self.args
        per_run = elapsed_ns / 1e9 / n
        if args.runs is not None:
            eta = (args.runs - n) * per_run
        else:
            eta = max(args.duration_s - elapsed_ns / 1e9, (args.min_runs - n) * per_run, 0.0)
        return round(max(0.0, min(eta, args.max_seconds - elapsed_ns / 1e9)), 2)


def main(argv=None):
    # type: (Optional[List[str]]) -> int
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Output(sys.stdout)
    state = CancelState()
    wake_r, restore = install_signals(state)
    bench = None
    try:
        try:
            args = parse_args(argv)
            bench = Bench(args, out, state, wakeup_fd=wake_r)
            out.emit(bench.run())
            return EXIT_OK
        except Cancelled:
            runs = bench.runs_done if bench is not None else 0
            how = state.signal_name or "a signal"
            out.emit({"event": "error", "code": "cancelled", "runs": runs,
                      "message": "benchmark cancelled by %s after %d timed runs; no result was recorded" % (how, runs)})
            return EXIT_ERROR
        except BenchError as exc:
            event = {"event": "error", "code": exc.code, "message": exc.message}
            event.update(exc.extra)
            out.emit(event)
            return EXIT_ERROR
        except OutputClosed:
            return EXIT_ERROR
        except Exception as exc:  # a bug: still answer in the protocol rather than with a traceback only
            import traceback
            traceback.print_exc()
            out.emit({"event": "error", "code": "internal", "message": "bench failed unexpectedly: %s: %s"
                      % (type(exc).__name__, exc)})
            return EXIT_ERROR
    except OutputClosed:
        return EXIT_ERROR
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
