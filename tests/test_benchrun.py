"""On-device benchmark: real onnxruntime on real models in a real subprocess, plus its statistics."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import models  # noqa: F401  (session fixture)

from fieldkit.agent import stats
from fieldkit.agent.benchwatch import Sampler, decode_throttle

ROOT = Path(__file__).resolve().parent.parent
MOBILENET = "mobilenetv2-like"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def bench(*args: Any, timeout: float = 60, prefix: list[str] | None = None) -> tuple[list[dict], int, str]:
    """Run ``python -m fieldkit.agent.benchrun ARGS``; every stdout line must be a JSON object."""
    cmd = [sys.executable] + (prefix or ["-m", "fieldkit.agent.benchrun"]) + [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=_env())
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    return events, proc.returncode, proc.stderr


def result_of(events: list[dict]) -> dict:
    assert events, "no output"
    assert events[0]["event"] == "started", events[0]
    assert events[-1]["event"] == "result", events[-1]
    assert all(e["event"] == "progress" for e in events[1:-1])
    return events[-1]


def error_of(events: list[dict], rc: int) -> dict:
    assert rc == 2
    assert events and events[-1]["event"] == "error", events
    assert not any(e["event"] == "result" for e in events)
    return events[-1]


def check_latency_invariants(res: dict) -> None:
    lat = res["latency_ms"]
    assert lat["n"] == res["runs"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert lat["std"] >= 0
    hist = res["latencies_ms"]
    assert len(hist["counts"]) == 40 and len(hist["edges_ms"]) == 41
    assert sum(hist["counts"]) == res["runs"]
    assert hist["edges_ms"][0] == pytest.approx(lat["min"]) and hist["edges_ms"][-1] == pytest.approx(lat["max"])
    assert hist["edges_ms"] == sorted(hist["edges_ms"])


# --- the benchmark process -----------------------------------------------------------------------

def test_mobilenet_runs_result_structure(models) -> None:
    path = models[MOBILENET]
    events, rc, err = bench("--model", path, "--runs", 50, "--warmup", 3, "--threads", 2)
    assert rc == 0, err
    started, res = events[0], result_of(events)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert started["model"] == {"path": str(path), "sha256": digest, "size_bytes": path.stat().st_size}
    assert started["pid"] > 0
    assert started["inputs"] == [{"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32",
                                  "model_shape": ["N", 3, 224, 224]}]
    assert started["settings"]["threads"] == 2 and started["settings"]["providers"] == ["CPUExecutionProvider"]
    assert started["providers"] == ["CPUExecutionProvider"]

    assert res["runs"] == 50 and res["stop_reason"] == "runs"
    check_latency_invariants(res)
    assert res["latency_ms"]["p999"] is None  # < 1000 runs
    # 50 runs: below MLPerf's 64 for p90 and 662 for p99
    assert res["valid"] is False
    assert res["p90_early_stopping_ms"] is None and res["p99_early_stopping_ms"] is None
    assert res["early_stopping_min_runs"] == {"p90": 64, "p99": 662}
    assert res["session_create_ms"] > 0 and res["first_run_ms"] > 0 and res["warmup_runs"] == 3
    assert res["throughput_ips"] == pytest.approx(50 / res["duration_s"], rel=1e-3)
    # back to back, each run is at least the fastest run
    assert res["duration_s"] >= 50 * res["latency_ms"]["min"] / 1000
    assert 0 < res["cpu_percent"] <= 100 * (os.cpu_count() or 1) + 10
    assert res["peak_rss_bytes"] > path.stat().st_size  # the weights are in memory
    mem = res["memory"]
    for key in ("available_start", "available_min", "available_end"):
        assert isinstance(mem[key], int) and mem[key] > 0
    assert mem["available_min"] <= min(mem["available_start"], mem["available_end"])
    assert mem["swap_in_pages"] >= 0 and mem["swap_out_pages"] >= 0
    assert res["deadline_misses"] == 0 and res["rate_hz"] is None
    assert isinstance(res["thermal"], dict)


def test_too_few_runs_are_not_valid_and_enough_are(models) -> None:
    events, rc, err = bench("--model", models["anomaly-tabular"], "--runs", 20, "--warmup", 0)
    assert rc == 0, err
    res = result_of(events)
    assert res["runs"] == 20 and res["valid"] is False and res["p90_early_stopping_ms"] is None
    assert res["warmup_runs"] == 1 and res["first_run_ms"] > 0  # the first run always happens

    events, rc, err = bench("--model", models["anomaly-tabular"], "--duration", 1, "--min-runs", 700,
                            "--progress-interval", 0.2)
    assert rc == 0, err
    res = result_of(events)
    assert res["stop_reason"] == "duration" and res["runs"] >= 700 and res["duration_s"] >= 1.0
    check_latency_invariants(res)
    lat = res["latency_ms"]
    assert res["valid"] is True
    # the early-stopping estimate is a conservative (upper) bound of the percentile
    assert lat["p90"] <= res["p90_early_stopping_ms"] <= lat["max"]
    assert lat["p99"] <= res["p99_early_stopping_ms"] <= lat["max"]
    if res["runs"] >= 1000:
        assert lat["p99"] <= lat["p999"] <= lat["max"]
    progress = [e for e in events if e["event"] == "progress" and e["phase"] == "run"]
    assert len(progress) >= 3
    assert [p["runs"] for p in progress] == sorted(p["runs"] for p in progress)
    for p in progress:
        assert p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"] and p["eta_s"] >= 0 and p["last_ms"] > 0
        assert p["elapsed_s"] <= 1.2


class VirtualTime:
    """The timed loop's clock and sleep: time moves only when the loop sleeps or a run takes time,
    so pacing is checked exactly on any machine, however busy (a real clock missed slots under load)."""

    def __init__(self) -> None:
        self.now = 10**9

    def clock(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0, round(seconds * 1e9))


class RunsTaking:
    """An inference session whose n-th run takes ``latencies_ms[n]`` of virtual time."""

    def __init__(self, vt: VirtualTime, latencies_ms: list[float]) -> None:
        self.vt, self.latencies = vt, list(latencies_ms)
        self.starts: list[int] = []

    def run(self, _outputs: Any, _feeds: Any, _ro: Any = None) -> None:
        self.starts.append(self.vt.now)
        self.vt.now += round(self.latencies[len(self.starts) - 1] * 1e6)


def paced_loop(rate_hz: float, latencies_ms: list[float]) -> tuple[dict, list[int], int]:
    """The real ``Bench.timed_loop`` at ``rate_hz`` on virtual time: (loop result, run starts from t0, period)."""
    import io

    from fieldkit.agent.benchrun import Bench, Output
    from fieldkit.agent.benchsettings import check_settings
    from fieldkit.agent.benchwatch import CancelState

    args = check_settings({"model": "m.onnx", "rate_hz": rate_hz, "runs": len(latencies_ms)})
    vt = VirtualTime()
    sess = RunsTaking(vt, latencies_ms)
    t0 = vt.now
    loop = Bench(args, Output(io.StringIO()), CancelState(), clock=vt.clock, sleep=vt.sleep).timed_loop(sess, {}, None)
    return loop, [s - t0 for s in sess.starts], round(1e9 / rate_hz)


def test_low_rate_has_no_deadline_misses() -> None:
    loop, starts, period = paced_loop(50, [1.0] * 30)
    assert loop["misses"] == 0 and loop["late_runs"] == 0 and loop["stop_reason"] == "runs"
    assert starts == [i * period for i in range(30)]  # every run on its slot of the 20 ms grid
    assert loop["wall_ns"] == 29 * period + 1_000_000  # the last starts at 29 x 20 ms and takes 1 ms


def test_a_slow_run_skips_the_slots_it_overran_without_a_catch_up_burst() -> None:
    lat = [1.0] * 12
    lat[5] = 45.0  # starts at 100 ms, ends at 145 ms: the 120 and 140 ms slots are gone
    loop, starts, period = paced_loop(50, lat)
    assert loop["late_runs"] == 1 and loop["misses"] == 2
    assert starts[:6] == [i * period for i in range(6)]
    assert starts[6:] == [(i + 2) * period for i in range(6, 12)]  # back on the grid at 160 ms, no burst
    assert len(starts) + loop["misses"] == 14  # every slot up to the end was either run or missed


def test_rate_paces_a_real_run(models) -> None:
    # On the real clock only what holds however busy the machine is: runs are held back to the
    # grid, and every slot up to the end was either run or counted as missed.
    events, rc, err = bench("--model", models["anomaly-tabular"], "--rate", 50, "--runs", 30)
    assert rc == 0, err
    res = result_of(events)
    assert res["runs"] == 30 and res["rate_hz"] == 50
    assert res["deadline_misses"] >= res["late_runs"] >= 0
    slots = res["runs"] + res["deadline_misses"]
    assert res["duration_s"] >= 29 / 50 - 1e-4  # the 30th run cannot start before 29 x 20 ms
    assert (slots - 1) / 50 - 1e-4 <= res["duration_s"] <= slots / 50 + 1e-4


def test_rate_above_capacity_counts_skipped_slots(models) -> None:
    rate = 2000  # a slot every 0.5 ms; a MobileNetV2 run takes several ms here
    events, rc, err = bench("--model", models[MOBILENET], "--rate", rate, "--runs", 30, "--warmup", 2,
                            "--threads", 2)
    assert rc == 0, err
    res = result_of(events)
    assert res["runs"] == 30
    assert res["deadline_misses"] > 0 and res["late_runs"] > 0
    assert res["deadline_misses"] >= res["late_runs"]
    # every slot up to the end was either run or missed: no catch-up bursts, no lost slots
    slots = res["runs"] + res["deadline_misses"]
    assert (slots - 1) / rate - 1e-3 <= res["duration_s"] <= slots / rate + 1e-3


def test_sigterm_stops_a_long_inference_promptly(models) -> None:
    # batch 64 on one thread: each inference takes ~0.5 s, so a prompt exit means it was interrupted
    cmd = [sys.executable, "-m", "fieldkit.agent.benchrun", "--model", str(models[MOBILENET]),
           "--shape", "input=64x3x224x224", "--threads", "1", "--warmup", "1", "--duration", "60",
           "--progress-interval", "0.01"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                            env=_env(), start_new_session=True)
    try:
        last_ms = None
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["event"] == "progress" and ev["phase"] == "run":
                last_ms = ev["last_ms"]  # printed right after a run: the next one has just started
                break
        assert last_ms is not None, proc.stderr.read()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        rc = proc.wait(timeout=5)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 5
    assert took < 0.5 * last_ms / 1000 or last_ms < 200, f"exit took {took:.2f}s with {last_ms} ms runs"
    ev = json.loads(rest.splitlines()[-1])
    assert ev["event"] == "error" and ev["code"] == "cancelled" and ev["runs"] >= 1
    assert "SIGTERM" in ev["message"]
    assert rc == 2
    with pytest.raises(ProcessLookupError):  # nothing left in its process group
        os.killpg(proc.pid, 0)


def test_corrupt_model_is_reported_with_its_sha256(models, tmp_path: Path) -> None:
    data = models[MOBILENET].read_bytes()
    truncated = tmp_path / "model.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    garbled = tmp_path / "garbled.onnx"
    garbled.write_bytes(b"\xff" * 64 + data[64:])
    for path in (truncated, garbled):
        events, rc, _ = bench("--model", path, "--runs", 5)
        err = error_of(events, rc)
        assert err["code"] == "invalid_model"
        assert err["message"].startswith(f"{path.name} is not a valid ONNX model (")
        assert "re-copy it or check the file's sha256" in err["message"]
        assert err["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not any(e["event"] == "started" for e in events)


def test_missing_model_and_unknown_provider(models, tmp_path: Path) -> None:
    events, rc, _ = bench("--model", tmp_path / "nope.onnx", "--runs", 5)
    err = error_of(events, rc)
    assert err["code"] == "model_not_found" and "nope.onnx not found" in err["message"]

    events, rc, _ = bench("--model", models["anomaly-tabular"], "--runs", 5, "--provider", "CUDAExecutionProvider")
    err = error_of(events, rc)
    assert err["code"] == "unknown_provider"
    assert "'CUDAExecutionProvider' is not available" in err["message"] and "CPUExecutionProvider" in err["message"]


def test_shapes_fill_symbolic_dims_and_mismatches_are_explained(models) -> None:
    events, rc, _ = bench("--model", models[MOBILENET], "--runs", 5, "--shape", "input=1x3x200x200")
    err = error_of(events, rc)
    assert err == {"event": "error", "code": "shape_mismatch",
                   "message": "input 'input' expects [N,3,224,224]; got 1x3x200x200"}

    events, rc, _ = bench("--model", models[MOBILENET], "--runs", 5, "--shape", "input=1x3x224")
    assert error_of(events, rc)["message"] == "input 'input' expects [N,3,224,224]; got 1x3x224"

    events, rc, _ = bench("--model", models[MOBILENET], "--runs", 5, "--shape", "image=1x3x224x224")
    err = error_of(events, rc)
    assert err["code"] == "bad_shape" and "model's inputs are: input" in err["message"]

    events, rc, err_text = bench("--model", models["anomaly-tabular"], "--runs", 5, "--shape", "features=16x32")
    assert rc == 0, err_text
    assert events[0]["inputs"][0]["shape"] == [16, 32]
    assert result_of(events)["runs"] == 5


def test_inputs_file(models, tmp_path: Path) -> None:
    good = tmp_path / "inputs.npz"
    np.savez(good, features=np.random.default_rng(1).random((4, 32), dtype=np.float32))
    events, rc, err_text = bench("--model", models["anomaly-tabular"], "--runs", 5, "--inputs", good)
    assert rc == 0, err_text
    assert events[0]["inputs"][0]["shape"] == [4, 32]
    assert events[0]["settings"]["inputs"] == str(good)
    result_of(events)

    wrong_name = tmp_path / "wrong_name.npz"
    np.savez(wrong_name, x=np.zeros((1, 32), np.float32))
    events, rc, _ = bench("--model", models["anomaly-tabular"], "--runs", 5, "--inputs", wrong_name)
    err = error_of(events, rc)
    assert err["code"] == "inputs_missing"
    assert err["message"] == "wrong_name.npz has no array for input(s) 'features' (it has: x)"

    wrong_dtype = tmp_path / "wrong_dtype.npz"
    np.savez(wrong_dtype, features=np.zeros((1, 32), np.float64))
    events, rc, _ = bench("--model", models["anomaly-tabular"], "--runs", 5, "--inputs", wrong_dtype)
    err = error_of(events, rc)
    assert err["code"] == "inputs_dtype"
    assert err["message"] == "wrong_dtype.npz: array 'features' is float64; the model expects float32"

    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, features=np.zeros((1, 31), np.float32))
    events, rc, _ = bench("--model", models["anomaly-tabular"], "--runs", 5, "--inputs", wrong_shape)
    assert error_of(events, rc)["message"] == "input 'features' expects [N,32]; got 1x31"


BLOCK_ONNXRUNTIME = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ModuleNotFoundError("No module named %r" % name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["benchrun"] + sys.argv[1:]
runpy.run_module("fieldkit.agent.benchrun", run_name="__main__", alter_sys=True)
"""


def test_device_without_onnxruntime(models) -> None:
    events, rc, _ = bench("--model", models["anomaly-tabular"], "--runs", 5, prefix=["-c", BLOCK_ONNXRUNTIME])
    err = error_of(events, rc)
    assert err == {"event": "error", "code": "onnxruntime_missing",
                   "message": "onnxruntime is not installed on the device: pip install onnxruntime, "
                              "or use a profile/image that ships it"}


def test_module_imports_stay_light_and_parse_as_python36() -> None:
    code = ("import sys, json, fieldkit.agent.benchrun, fieldkit.agent.stats\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'onnxruntime'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env(),
                         cwd=str(ROOT), timeout=60)
    assert json.loads(out.stdout) == []
    for name in ("benchrun.py", "benchsettings.py", "benchsession.py", "benchwatch.py", "stats.py"):
        src = (ROOT / "fieldkit" / "agent" / name).read_text()
        ast.parse(src, feature_version=(3, 6))


def test_bench_answers_in_json_under_python36(tmp_path: Path) -> None:
    """JetPack 4 devices run Python 3.6: the bench process starts there (signal set-up included) and
    answers a missing model with its JSON error line, not a traceback."""
    from test_old_pythons import find_python

    python, why = find_python("3.6")
    if python is None:
        pytest.skip(why)
    proc = subprocess.run([python, "-m", "fieldkit.agent.benchrun", "--model", str(tmp_path / "none.onnx")],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=_env())
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert error_of(events, proc.returncode)["code"] == "model_not_found", proc.stderr[-2000:]


def test_int8_model_runs(models) -> None:
    assert models["mobilenetv2-like-int8"].stat().st_size < models[MOBILENET].stat().st_size / 3
    events, rc, err = bench("--model", models["mobilenetv2-like-int8"], "--runs", 30, "--warmup", 3, "--threads", 2,
                            "--spin", "off")
    assert rc == 0, err
    res = result_of(events)
    assert res["runs"] == 30 and res["settings"]["spin"] == "off"
    check_latency_invariants(res)


# --- device readings -----------------------------------------------------------------------------

def test_sampler_reads_thermal_zones_and_cpufreq(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    zones = {"thermal_zone0": ("cpu-thermal", 48312), "thermal_zone1": ("gpu-thermal", 45000),
             "thermal_zone2": ("cpu-thermal", 50000)}
    for name, (kind, milli) in zones.items():
        d = sysfs / "class" / "thermal" / name
        d.mkdir(parents=True)
        (d / "type").write_text(kind + "\n")
        (d / "temp").write_text(f"{milli}\n")
    for cpu, (cur, mx) in enumerate([(1500000, 1800000), (600000, 1800000)]):
        d = sysfs / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{cur}\n")
        (d / "cpuinfo_max_freq").write_text(f"{mx}\n")

    sampler = Sampler(sys_root=str(sysfs))
    assert sampler.temp_now == 50.0
    (sysfs / "class/thermal/thermal_zone0/temp").write_text("71000\n")
    sampler.sample()
    (sysfs / "class/thermal/thermal_zone0/temp").write_text("65500\n")
    (sysfs / "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq").write_text("1800000\n")
    sampler.sample()
    rep = sampler.report()
    assert rep["thermal"] == {
        "cpu-thermal": {"start": 48.312, "max": 71.0, "end": 65.5},
        "gpu-thermal": {"start": 45.0, "max": 45.0, "end": 45.0},
        "cpu-thermal:thermal_zone2": {"start": 50.0, "max": 50.0, "end": 50.0},
    }
    assert rep["cpufreq"] == {"min_mhz": 600, "max_mhz": 1800, "hw_max_mhz": 1800}
    assert rep["memory"]["available_start"] > 0  # the real /proc/meminfo
    assert rep["samples"] == 3


def test_decode_vcgencmd_throttle_flags() -> None:
    assert decode_throttle(None, None) is None
    flags = decode_throttle(0x10000, 0x50005)  # under-voltage now; capped... since boot
    assert flags["start"] == "0x10000" and flags["end"] == "0x50005"
    assert flags["now"] == {"under_voltage": True, "freq_capped": False, "throttled": True, "soft_temp_limit": False}
    assert flags["since_boot"]["under_voltage"] and flags["since_boot"]["throttled"]
    # under-voltage had already happened before the run; throttling happened during it
    assert flags["during_run"] == {"under_voltage": False, "freq_capped": False, "throttled": True,
                                   "soft_temp_limit": False}


# --- statistics ----------------------------------------------------------------------------------

def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert stats.percentile(values, 0.5) == 50
    assert stats.percentile(values, 0.9) == 90  # LoadGen's floor(q*n) index would give 91
    assert stats.percentile(values, 0.99) == 99
    assert stats.percentile(values, 1.0) == 100
    assert stats.percentile(values, 0.0) == 1
    assert stats.percentile(values, 0.901) == 91
    five = [15, 20, 35, 40, 50]  # the textbook nearest-rank example
    assert [stats.percentile(five, q) for q in (0.05, 0.30, 0.40, 0.50, 1.0)] == [15, 20, 20, 35, 50]
    assert stats.percentile(list(range(1, 11)), 0.7) == 7  # 0.7 * 10 is 7.000000000000001 in floats
    with pytest.raises(ValueError):
        stats.percentile([], 0.5)


def test_summary_in_milliseconds() -> None:
    s = stats.summary([4_000_000, 1_000_000, 3_000_000, 2_000_000])
    assert s["n"] == 4 and s["min"] == 1.0 and s["max"] == 4.0 and s["mean"] == 2.5
    assert s["std"] == pytest.approx(math.sqrt(1.25), abs=1e-6)  # population std
    assert s["p50"] == 2.0 and s["p90"] == 4.0 and s["p999"] is None
    big = stats.summary([i * 1000 for i in range(1, 1001)])
    assert big["p999"] == 0.999 and big["p99"] == 0.99 and big["max"] == 1.0
    assert stats.summary([])["n"] == 0


def _loadgen_reference(n: int, p: Fraction, c: Fraction = Fraction(99, 100)) -> int | None:
    """LoadGen's SingleStream loop, literally, with exact binomial sums: t, or None if invalid."""
    q = 1 - p

    def odds(h: int, t: int) -> Fraction:  # P(at most t overlatency in h + t queries)
        m = h + t
        return sum(math.comb(m, x) * q ** x * p ** (m - x) for x in range(t + 1))

    def find_min_passing(t: int) -> int:
        h = 0
        while not odds(h, t) < 1 - c:
            h += 1
        return h

    h_min = find_min_passing(1)
    if n < h_min + 1:
        return None
    t = 1
    for i in range(2, n + 1):
        if n < find_min_passing(i) + i:
            t = i - 1
            break
    return t


def test_early_stopping_matches_loadgen() -> None:
    assert stats.early_stopping_min_queries(0.90) == 64
    assert stats.early_stopping_min_queries(0.99) == 662
    assert stats.early_stopping_min_queries(0.999) == 6636
    for n in (64, 65, 90, 100, 150, 230):
        assert stats.early_stopping_overlatency(n, 0.90) == _loadgen_reference(n, Fraction(9, 10)), n
    assert _loadgen_reference(63, Fraction(9, 10)) is None

    lat = [i * 1_000_000 for i in range(1, 64)]  # 1..63 ms
    assert stats.early_stopping_percentile(lat, 0.90) == (None, False, 64)
    lat.append(64_000_000)
    assert stats.early_stopping_percentile(lat, 0.90) == (64.0, True, 64)  # t = 1: the maximum
    hundred = [i * 1_000_000 for i in range(100, 0, -1)]  # unsorted input
    # t = 3 for n = 100: discard the 2 highest, so the 98th smallest
    assert stats.early_stopping_percentile(hundred, 0.90) == (98.0, True, 64)
    value, valid, need = stats.early_stopping_percentile(hundred, 0.99)
    assert (value, valid, need) == (None, False, 662)
    # with many runs it converges on the plain percentile from above
    many = [i * 1000 for i in range(1, 100_001)]
    est, ok, _ = stats.early_stopping_percentile(many, 0.90)
    assert ok and stats.percentile(many, 0.90) / 1e6 < est < stats.percentile(many, 0.91) / 1e6


# --- settings: one table, checked once, by key name -------------------------------------------------

def test_settings_are_checked_by_key_name() -> None:
    from fieldkit.agent.benchsettings import SETTING_KEYS, BenchError, check_settings

    cases = {
        "threads": (-1, "threads must be a whole number >= 0, got -1"),
        "runs": (0, "runs must be a whole number >= 1, got 0"),
        "duration_s": ("20", "duration_s must be a positive number, got '20'"),
        "rate_hz": (-5, "rate_hz must be a positive number, got -5"),
        "progress_interval_s": (1e9, "progress_interval_s must be a positive number <= 3600.0, got 1000000000.0"),
        "spin": ("maybe", "spin must be one of on, off, got maybe"),
        "warmup": (True, "warmup must be a whole number from 0 to 1000000, got True"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(BenchError) as err:
            check_settings({"model": "m.onnx", key: value})
        assert err.value.code == "bad_arguments" and err.value.message == message
    with pytest.raises(BenchError, match="unknown bench setting"):
        check_settings({"model": "m.onnx", "--threads": 2})
    s = check_settings({"model": "m.onnx", "runs": 5, "duration_s": None, "min_runs": None})
    assert (s.runs, s.duration_s, s.max_seconds, s.providers) == (5, 20.0, 120.0, ["CPUExecutionProvider"])
    assert set(s.as_json()) == set(SETTING_KEYS)


def test_settings_json_is_how_the_agent_starts_the_benchmark(models) -> None:
    settings = {"model": str(models["anomaly-tabular"]), "runs": 5, "warmup": 1, "threads": 1}
    events, rc, err = bench("--settings-json", json.dumps(settings))
    assert rc == 0, err
    assert result_of(events)["runs"] == 5
    events, rc, _ = bench("--settings-json", json.dumps(dict(settings, threads=-1)))
    assert error_of(events, rc)["message"] == "threads must be a whole number >= 0, got -1"
