"""`fieldkit bench` end to end: the real CLI, the real agent starting the real benchmark process,
real onnxruntime on the test models, over `local:`, a simulated SSH device, a simulated serial
line, and a real OpenSSH sshd; plus the verdict rules and report comparison."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from models import models  # noqa: F401  (session fixture)

from fieldkit.bench import BenchSettings, bench_cache_dir, parse_model_spec, run_bench
from fieldkit.benchreport import compare, list_reports, load_report, save_report, verdict
from fieldkit.devices import open_session as connect
from fieldkit.errors import Cancelled, ConfigError, DeviceError
from fieldkit.profiles import get_profile

MOBILENET = "mobilenetv2-like"
INT8 = "mobilenetv2-like-int8"
ANOMALY = "anomaly-tabular"
CACHE = "var/lib/fieldkit/bench-cache"


def cli(*args: object, **kw: object) -> subprocess.CompletedProcess:
    return run_cli(*[str(a) for a in args], **kw)


def bench_json(*args: object, env: dict | None = None, timeout: float = 90) -> tuple[int, dict, str]:
    proc = run_cli("bench", *[str(a) for a in args], "--json", env=env, timeout=timeout)
    try:
        doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON document:\n{proc.stdout[:2000]}\nstderr:\n{proc.stderr[-2000:]}")
    return proc.returncode, doc, proc.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_latency(doc: dict) -> None:
    lat = doc["latency_ms"]
    assert lat["n"] == doc["runs"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (a /proc scan)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(f"{pid}: {cmd}")
    return found


def wait_until_gone(text: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_mentioning(text)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def write_profile(home, name: str, body: str) -> None:
    home.profiles_dir.mkdir(parents=True, exist_ok=True)
    (home.profiles_dir / f"{name}.toml").write_text(f'name = "{name}"\ndescription = "test profile"\n' + body)


# --- over local: --------------------------------------------------------------------------------

def test_local_bench_structure_then_cache_reuse_and_a_pass(home, device_root: Path, models) -> None:
    model = models[MOBILENET]
    digest = sha256(model)
    rc, doc, err = bench_json(f"local:{device_root}", model, "--runs", 30, "--warmup", 3, "--threads", 2,
                              "--use-case", "classification")
    assert rc == 0, err
    for key in ("model", "settings", "session_create_ms", "first_run_ms", "runs", "latency_ms",
                "p90_early_stopping_ms", "valid", "throughput_ips", "peak_rss_bytes", "memory", "thermal",
                "deadline_misses", "verdict", "device", "profile", "use_case", "budget_ms"):
        assert key in doc, key
    assert doc["model"]["path"] == str(model) and doc["model"]["sha256"] == digest
    assert doc["model"]["size_bytes"] == model.stat().st_size and doc["model"]["uploaded"] is True
    assert doc["device"] == f"local:{device_root}" and doc["transport"] == "local"
    assert (doc["profile"], doc["use_case"], doc["budget_ms"], doc["metric"]) == (
        "generic-linux", "classification", 250.0, "p95")
    assert doc["settings"]["runs"] == 30 and doc["settings"]["threads"] == 2 and doc["settings"]["spin"] == "on"
    assert doc["runs"] == 30 and doc["warmup_runs"] == 3
    check_latency(doc)
    assert doc["session_create_ms"] > 0 and doc["first_run_ms"] > 0 and doc["throughput_ips"] > 0
    assert doc["peak_rss_bytes"] > model.stat().st_size
    assert doc["memory"]["available_min"] > 0 and doc["deadline_misses"] == 0
    # 30 runs are below MLPerf's 64: not valid, and the verdict says so
    assert doc["valid"] is False and doc["p90_early_stopping_ms"] is None
    assert doc["verdict"]["status"] == "warn"
    assert any(r.startswith("only 30 timed runs") for r in doc["verdict"]["reasons"]), doc["verdict"]
    cached = device_root / CACHE / f"{digest}.onnx"
    assert sha256(cached) == digest
    saved = list(home.reports_dir.glob("bench-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == doc
    mtime = cached.stat().st_mtime_ns

    # second run: found in the device's bench cache, not uploaded; long enough for progress and a pass
    rc, doc2, err = bench_json(f"local:{device_root}", model, "--duration", "1.2", "--threads", 2,
                               "--use-case", "classification")
    assert rc == 0, err
    assert doc2["model"]["uploaded"] is False and doc2["model"]["sha256"] == digest
    assert cached.stat().st_mtime_ns == mtime
    assert doc2["runs"] >= 64 and doc2["valid"] is True
    check_latency(doc2)
    assert doc2["latency_ms"]["p90"] <= doc2["p90_early_stopping_ms"] <= doc2["latency_ms"]["max"]
    assert doc2["verdict"]["status"] == "pass", doc2["verdict"]
    assert doc2["verdict"]["reasons"] == []
    latency = next(c for c in doc2["verdict"]["checks"] if c["name"] == "latency")
    assert "within the 250 ms budget for classification" in latency["message"]
    progress = [line for line in err.splitlines() if line.startswith("run ")]
    assert progress and all("p50" in line and "p99" in line and "ETA" in line for line in progress), err
    assert len(list(home.reports_dir.glob("bench-*.json"))) == 2


def test_budget_verdicts_in_technician_language(home, device_root: Path, models) -> None:
    write_profile(home, "line-pc", '[use_cases.vision-reject]\nbudget_ms = 0.5\nmetric = "p99"\n'
                                   '[use_cases.relaxed]\nbudget_ms = 60000\nmetric = "p90"\n')
    target = f"local:{device_root}"
    proc = cli("bench", target, models[MOBILENET], "--runs", 20, "--warmup", 2, "--threads", 2,
                   "--profile", "line-pc", "--use-case", "vision-reject", timeout=90)
    assert proc.returncode == 1, proc.stderr
    assert "verdict: FAIL" in proc.stdout
    p99 = next(line for line in proc.stdout.splitlines() if line.startswith("  - p99 "))
    assert " ms exceeds the 0.5 ms budget for vision-reject; even the median run takes " in p99
    assert p99.endswith("try the int8 variant, a smaller model or a faster device"), p99

    rc, doc, err = bench_json(target, models[INT8], "--runs", 20, "--warmup", 2, "--threads", 2,
                              "--profile", "line-pc", "--budget-ms", "0.001")
    assert rc == 1, err
    assert doc["verdict"]["status"] == "fail" and doc["budget_ms"] == 0.001 and doc["metric"] == "p99"
    first = doc["verdict"]["reasons"][0]
    assert first.startswith(f"p99 ") and "exceeds the 0.001 ms budget given with --budget-ms" in first
    assert "int8 variant" not in first  # it is the int8 variant already

    rc, doc, err = bench_json(target, models[ANOMALY], "--runs", 70, "--profile", "line-pc", "--use-case", "relaxed")
    assert rc == 0, err
    assert doc["verdict"]["status"] == "pass", doc["verdict"]
    latency = next(c for c in doc["verdict"]["checks"] if c["name"] == "latency")
    assert latency["message"].startswith("p90 (early-stopping estimate) ")
    assert latency["value"] == doc["p90_early_stopping_ms"]


def test_rate_above_capacity_misses_deadlines_and_fails(home, device_root: Path, models, tmp_path: Path) -> None:
    rc, doc, err = bench_json(f"local:{device_root}", models[MOBILENET], "--rate", 2000, "--runs", 20,
                              "--warmup", 2, "--threads", 2, "--budget-ms", 10000, "--report", tmp_path / "r.json")
    assert rc == 1, err
    assert json.loads((tmp_path / "r.json").read_text()) == doc
    assert doc["settings"]["rate_hz"] == 2000 and doc["runs"] == 20
    misses = doc["deadline_misses"]
    assert misses > 0 and doc["late_runs"] > 0
    assert doc["verdict"]["status"] == "fail"
    assert any(r.startswith(f"missed {misses} deadline") and "at 2000 Hz" in r for r in doc["verdict"]["reasons"])
    latency = next(c for c in doc["verdict"]["checks"] if c["name"] == "latency")
    assert latency["status"] == "pass"  # it is the pacing, not the budget, that fails


@pytest.mark.parametrize("how", ["process", "terminal"])
def test_ctrl_c_stops_the_benchmark_on_the_device(home, device_root: Path, models, how: str) -> None:
    # "terminal": Ctrl-C in a terminal signals the whole foreground group (the CLI and its local agent)
    cmd = [sys.executable, "-m", "fieldkit", "bench", f"local:{device_root}", str(models[MOBILENET]),
           "--duration", "60", "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("run "):
                break
        assert processes_mentioning(f"{device_root}/{CACHE}"), "".join(seen)  # the benchmark is running
        if how == "process":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        out, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert out == ""
    assert "cancelled" in rest
    if how == "process":
        assert "nothing was left running" in rest, rest
    assert wait_until_gone(str(device_root)) == []  # neither the agent nor the benchmark process
    assert not list(home.reports_dir.glob("bench-*.json"))  # no partial report


def test_corrupt_model_and_shape_mismatch_are_device_failures(device_root: Path, models, tmp_path: Path) -> None:
    data = models[MOBILENET].read_bytes()
    broken = tmp_path / "camera-model.onnx"
    broken.write_bytes(data[: len(data) // 4])
    rc, doc, err = bench_json(f"local:{device_root}", broken, "--runs", 5)
    assert rc == 4 and doc == {}
    assert "camera-model.onnx is not a valid ONNX model (" in err  # named as the technician knows it
    assert sha256(broken) in err

    rc, doc, err = bench_json(f"local:{device_root}", models[MOBILENET], "--runs", 5, "--shape", "input=1x3x200x200")
    assert rc == 4 and doc == {}
    assert "input 'input' expects [N,3,224,224]; got 1x3x200x200" in err
    assert "hint: --shape can only fill the model's symbolic dimensions" in err


def test_device_without_onnxruntime_says_so(device_root: Path, models, tmp_path: Path) -> None:
    hidden = tmp_path / "no-ort"
    (hidden / "onnxruntime").mkdir(parents=True)
    (hidden / "onnxruntime" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'onnxruntime'\")\n")
    rc, doc, err = bench_json(f"local:{device_root}", models[ANOMALY], "--runs", 5, env={"PYTHONPATH": str(hidden)})
    assert rc == 4 and doc == {}
    assert "onnxruntime is not installed on the device: pip install onnxruntime" in err


def test_configuration_errors_exit_2_before_touching_the_device(home, device_root: Path, models) -> None:
    rc, _, err = bench_json(f"local:{device_root}", models[ANOMALY], "--use-case", "vision-rejct")
    assert rc == 2
    assert 'no use case "vision-rejct"; available: anomaly-scoring, classification' in err
    rc, _, err = bench_json(f"local:{device_root}", models[ANOMALY], "--shape", "input=1xAx3")
    assert rc == 2 and "--shape input=1xAx3" in err
    rc, _, err = bench_json(f"local:{device_root}", "no-such-model.onnx")
    assert rc == 2 and "no-such-model.onnx: no such file" in err
    rc, _, err = bench_json("compare", "only-one")
    assert rc == 2 and "bench compare A B" in err
    assert not (device_root / CACHE).exists()
    rc, _, err = bench_json(f"local:{device_root}/missing", models[ANOMALY])
    assert rc == 3 and "is not a directory" in err  # a device that cannot be reached


def test_inputs_file_is_uploaded_once_and_used(home, device_root: Path, models, tmp_path: Path) -> None:
    import numpy as np

    npz = tmp_path / "window.npz"
    np.savez(npz, features=np.random.default_rng(3).random((4, 32), dtype=np.float32))
    profile = get_profile("generic-linux", home)
    with connect(f"local:{device_root}", home) as link:
        first = run_bench(link, models[ANOMALY], BenchSettings(runs=5, inputs=npz), profile=profile)
        again = run_bench(link, models[ANOMALY], BenchSettings(runs=5, inputs=npz), profile=profile)
    digest = sha256(npz)
    assert first.settings["inputs_sha256"] == digest and first.settings["inputs_uploaded"] is True
    assert again.settings["inputs_uploaded"] is False and again.settings["inputs"] == str(npz)
    assert first.result["inputs"][0]["shape"] == [4, 32]
    assert sha256(device_root / CACHE / f"{digest}.npz") == digest


def test_core_bench_modules_stay_light() -> None:
    code = ("import sys, json, fieldkit.bench, fieldkit.cli.bench\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(ROOT),
                         timeout=60)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"textual", "rich", "screens", "onnxruntime", "numpy", "paramiko", "serial"}


def test_installed_models_and_local_model_directories(home, device_root: Path, models, tmp_path: Path) -> None:
    base = device_root / "var/lib/fieldkit/models/anomaly"
    for version in ("1.0.0", "1.1.0"):
        d = base / version
        d.mkdir(parents=True)
        (d / "detector.onnx").write_bytes(models[ANOMALY].read_bytes())
        (d / "release.json").write_text(json.dumps({"name": "anomaly", "version": version}))
    os.symlink("1.1.0", base / "current")
    profile = get_profile("generic-linux", home)
    with connect(f"local:{device_root}", home) as link:
        rep = run_bench(link, "installed:anomaly", BenchSettings(runs=10), profile=profile)
        assert rep.model["source"] == "installed" and rep.model["version"] == "1.1.0"
        assert rep.model["path"] == "/var/lib/fieldkit/models/anomaly/1.1.0/detector.onnx"
        assert rep.model["uploaded"] is None and rep.model["sha256"] == sha256(models[ANOMALY])
        assert rep.result["runs"] == 10
        rep = run_bench(link, "installed:anomaly@1.0.0", BenchSettings(runs=10), profile=profile)
        assert rep.model["version"] == "1.0.0" and rep.model["path"].endswith("/1.0.0/detector.onnx")
        with pytest.raises(DeviceError, match=r"no model nope is installed .* \(installed: anomaly\)") as exc:
            run_bench(link, "installed:nope", BenchSettings(runs=10), profile=profile)
        assert exc.value.exit_code == 4
        with pytest.raises(DeviceError, match=r"no version 2.0.0 on the device \(versions: 1.0.0, 1.1.0\)"):
            run_bench(link, "installed:anomaly@2.0.0", BenchSettings(runs=10), profile=profile)
        assert not list((device_root / CACHE).glob("*.onnx"))  # installed models are run in place

        # a local model directory: release.json names which of its .onnx files to run
        mdir = tmp_path / "release-2"
        mdir.mkdir()
        (mdir / "spare.onnx").write_bytes(models[MOBILENET].read_bytes())
        (mdir / "scorer.onnx").write_bytes(models[ANOMALY].read_bytes())
        (mdir / "release.json").write_text(json.dumps({"name": "pump-scorer", "version": "2.0.0",
                                                       "model_file": "scorer.onnx"}))
        rep = run_bench(link, str(mdir), BenchSettings(runs=10), profile=profile)
        assert rep.model["source"] == "dir" and rep.model["name"] == "pump-scorer" and rep.model["version"] == "2.0.0"
        assert rep.model["sha256"] == sha256(models[ANOMALY]) and rep.model["uploaded"] is True
    (mdir / "release.json").write_text(json.dumps({"name": "pump-scorer"}))
    with pytest.raises(ConfigError, match=r"holds 2 \.onnx files \(scorer.onnx, spare.onnx\)"):
        parse_model_spec(str(mdir))


def test_a_damaged_cached_copy_is_replaced(home, device_root: Path, models) -> None:
    profile = get_profile("generic-linux", home)
    digest = sha256(models[ANOMALY])
    with connect(f"local:{device_root}", home) as link:
        first = run_bench(link, models[ANOMALY], BenchSettings(runs=5), profile=profile)
        assert first.model["uploaded"] is True
        cached = device_root / CACHE / f"{digest}.onnx"
        data = bytearray(cached.read_bytes())
        data[100] ^= 0xFF  # same size, different bytes: a stat cannot tell
        cached.write_bytes(bytes(data))
        again = run_bench(link, models[ANOMALY], BenchSettings(runs=5), profile=profile)
    assert again.model.get("recached") is True and again.model["uploaded"] is True
    assert sha256(cached) == digest


def test_one_benchmark_at_a_time_and_cancel_through_the_api(home, device_root: Path, models) -> None:
    profile = get_profile("generic-linux", home)
    running = threading.Event()
    cancel = threading.Event()
    outcome: dict = {}

    def first() -> None:
        def progress(ev: dict) -> None:
            if ev.get("phase") == "run":
                running.set()
        try:
            with connect(f"local:{device_root}", home) as link:
                run_bench(link, models[ANOMALY], BenchSettings(duration_s=60), profile=profile,
                          progress=progress, cancel=cancel)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            running.set()

    t = threading.Thread(target=first)
    t.start()
    try:
        assert running.wait(60)
        assert "error" not in outcome, outcome
        with connect(f"local:{device_root}", home) as link:
            with pytest.raises(DeviceError, match="another benchmark is already running on this device") as exc:
                run_bench(link, models[ANOMALY], BenchSettings(runs=5), profile=profile)
        assert exc.value.code == "busy"
    finally:
        cancel.set()
        t.join(30)
    assert isinstance(outcome.get("error"), Cancelled), outcome
    assert "nothing was left running" in str(outcome["error"])
    assert wait_until_gone(f"{device_root}/{CACHE}") == []


def test_compare_fp32_and_int8(home, device_root: Path, models) -> None:
    profile = get_profile("generic-linux", home)
    with connect(f"local:{device_root}", home) as link:
        settings = BenchSettings(runs=30, warmup=3, threads=2)
        a = run_bench(link, models[MOBILENET], settings, profile=profile, use_case="classification")
        b = run_bench(link, models[INT8], settings, profile=profile, use_case="classification")
    path_a, path_b = save_report(home, a), save_report(home, b)
    assert path_a.parent == home.reports_dir and path_a != path_b
    assert [r.id for r in list_reports(home)] == [a.id, b.id]
    assert load_report(home, a.id).to_json() == a.to_json()
    assert load_report(home, str(path_b)).id == b.id

    rows = {r.metric: r for r in compare(a, b)}
    p50 = rows["p50"]
    assert p50.a == a.result["latency_ms"]["p50"] and p50.b == b.result["latency_ms"]["p50"]
    assert p50.delta_pct == pytest.approx(100 * (p50.b - p50.a) / p50.a, abs=0.01)
    assert rows["model size"].better == "b" and rows["model size"].delta_pct < -50
    assert rows["model"].a == MOBILENET and rows["model"].b == INT8 and rows["model"].delta_pct is None

    proc = cli("bench", "compare", a.id, str(path_b), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["a"]["id"] == a.id and doc["b"]["id"] == b.id
    cli_p50 = next(r for r in doc["rows"] if r["metric"] == "p50")
    assert cli_p50["delta_pct"] == p50.delta_pct
    proc = cli("bench", "compare", a.id[:2], b.id)  # "20..." begins both ids
    assert proc.returncode == 2 and "matches 2 reports" in proc.stderr
    proc = cli("bench", "compare", a.id, b.id[:-2])  # a unique beginning of an id is enough
    assert proc.returncode == 0, proc.stderr
    assert MOBILENET in proc.stdout and INT8 in proc.stdout and "B vs A" in proc.stdout
    assert f"{p50.delta_pct:+.1f} %" in proc.stdout
    proc = cli("bench", "list")
    assert proc.returncode == 0 and a.id in proc.stdout and b.id in proc.stdout


# --- over the real transports -----------------------------------------------------------------

def test_bench_on_a_simulated_ssh_device(home, models) -> None:
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=1, serial=0) as sim:
        dev = sim.devices[0]
        rc, doc, err = bench_json(dev.name, models[INT8], "--runs", 30, "--threads", 2,
                                  "--use-case", "classification")
        assert rc == 0, err
        assert doc["transport"] == "ssh" and doc["device"] == dev.name and doc["target"] == dev.target
        assert doc["runs"] == 30 and doc["model"]["uploaded"] is True
        check_latency(doc)
        assert sha256(Path(dev.root) / CACHE / f"{doc['model']['sha256']}.onnx") == sha256(models[INT8])
        assert doc["verdict"]["status"] in ("pass", "warn")

        # the laptop goes away mid-run (lid closed, cable pulled): the agent ends the benchmark
        running = threading.Event()
        failure: list = []
        link = connect(dev.name, home)

        def run() -> None:
            try:
                run_bench(link, models[INT8], BenchSettings(duration_s=60, threads=1),
                          profile=get_profile("generic-linux", home),
                          progress=lambda ev: ev.get("phase") == "run" and running.set())
            except BaseException as exc:
                failure.append(exc)
            running.set()

        t = threading.Thread(target=run)
        t.start()
        assert running.wait(60) and not failure, failure
        assert processes_mentioning(f"{dev.root}/{CACHE}")
        link.close("test: laptop gone")
        t.join(30)
        assert failure and failure[0].exit_code == 3  # LinkLost
        assert wait_until_gone(f"{dev.root}/{CACHE}") == []
    assert wait_until_gone(dev.root) == []


def test_bench_over_a_serial_line(home, models) -> None:
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=0, serial=1) as sim:
        dev = sim.devices[0]
        rc, doc, err = bench_json(dev.name, models[INT8], "--runs", 20, "--threads", 2)
        assert rc == 0, err
        assert doc["transport"] == "serial" and doc["runs"] == 20 and doc["model"]["uploaded"] is True
        check_latency(doc)
        assert sha256(Path(dev.root) / CACHE / f"{doc['model']['sha256']}.onnx") == sha256(models[INT8])


def test_bench_through_a_real_sshd(home, models, tmp_path: Path) -> None:
    from sshd import Sshd, skip_unless_available

    from fieldkit.link.sshauth import ensure_client_key

    skip_unless_available()
    device = tmp_path / "device"
    # The test machine's /usr/bin/python3 has no onnxruntime: the profile names the interpreter that has,
    # and keeps the device paths inside the test's directory.
    write_profile(home, "sshd-box", f'[transport]\npython = ["{sys.executable}"]\n'
                                    f'[paths]\nmodels = "{device}/var/lib/fieldkit/models"\n')
    with Sshd(tmp_path / "sshd", home=tmp_path / "device-home") as sshd:
        sshd.authorize(Path(str(ensure_client_key(home)) + ".pub"))
        home.known_hosts.write_text(sshd.known_hosts_line() + "\n")
        target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
        rc, doc, err = bench_json(target, models[ANOMALY], "--runs", 40, "--profile", "sshd-box",
                                  "--budget-ms", 1000)
    assert rc == 0, err
    assert doc["transport"] == "ssh" and doc["profile"] == "sshd-box" and doc["runs"] == 40
    check_latency(doc)
    assert doc["verdict"]["status"] == "warn"  # 40 runs: not valid for p90
    assert doc["model"]["device_path"] == f"{device}/var/lib/fieldkit/bench-cache/{sha256(models[ANOMALY])}.onnx"
    assert sha256(Path(doc["model"]["device_path"])) == sha256(models[ANOMALY])


# --- verdict rules and pieces -------------------------------------------------------------------

def _doc(**over: object) -> dict:
    doc = {
        "runs": 700, "valid": True, "early_stopping_min_runs": {"p90": 64, "p99": 662},
        "latency_ms": {"min": 8.0, "mean": 10.0, "std": 1.0, "p50": 10.0, "p90": 12.0, "p95": 13.0, "p99": 15.0,
                       "max": 20.0},
        "p90_early_stopping_ms": 12.5, "p99_early_stopping_ms": 16.0, "throughput_ips": 100.0,
        "peak_rss_bytes": 200 * 2**20, "rate_hz": None, "deadline_misses": 0, "late_runs": 0,
        "memory": {"available_start": 3 * 2**30, "available_min": 2 * 2**30, "available_end": 3 * 2**30,
                   "swap_in_pages": 0, "swap_out_pages": 0},
        "thermal": {"cpu-thermal": {"start": 50.0, "max": 60.0, "end": 58.0}},
        "throttle": None, "stop_reason": "duration", "settings": {"threads": 4}, "model": {"name": "cam"},
    }
    doc.update(over)
    return doc


def test_verdict_rules(home) -> None:
    pi = get_profile("raspberry-pi-5", home)
    ok = verdict(_doc(), pi, use_case="vision-reject")
    assert ok.status == "pass" and ok.reasons == []
    # vision-reject: p99 within 100 ms, 662+ runs: the early-stopping p99 is what is judged
    assert next(c for c in ok.checks if c.name == "latency").value == 16.0

    slow = verdict(_doc(latency_ms={**_doc()["latency_ms"], "p99": 148.0, "max": 150.0},
                        p99_early_stopping_ms=None, runs=400), pi, use_case="vision-reject")
    assert slow.status == "fail"
    assert slow.reasons[0] == ("p99 148 ms exceeds the 100 ms budget for vision-reject; try the int8 variant, "
                               "fewer threads or --spin off")
    tight = verdict(_doc(p99_early_stopping_ms=95.0), pi, use_case="vision-reject")
    assert tight.status == "warn" and "less than 10 % to spare" in tight.reasons[0]

    low_mem = verdict(_doc(memory={**_doc()["memory"], "available_min": 300 * 2**20}), pi, use_case="vision-reject")
    assert low_mem.status == "fail"
    assert low_mem.reasons == ["free memory fell to 300 MB during the run; the raspberry-pi-5 profile keeps 512 MB "
                               "for the OS, runtime and logging; the benchmark process peaked at 200 MB: stop other "
                               "services or use a smaller (int8) model"]
    swapped = verdict(_doc(memory={**_doc()["memory"], "swap_out_pages": 12}), pi, use_case="vision-reject")
    assert swapped.status == "fail" and swapped.reasons[0].startswith("the device swapped during the run (0 pages in, 12 out)")
    hot = verdict(_doc(thermal={"cpu-thermal": {"start": 60.0, "max": 83.0, "end": 81.0}}), pi, use_case="vision-reject")
    assert hot.status == "fail" and "cpu-thermal reached 83 °C" in hot.reasons[0]
    warm = verdict(_doc(thermal={"cpu-thermal": {"start": 60.0, "max": 76.0, "end": 74.0}}), pi, use_case="vision-reject")
    assert warm.status == "warn"
    throttled = verdict(_doc(throttle={"now": {"throttled": False}, "during_run": {"throttled": True,
                                                                                   "under_voltage": False}}),
                        pi, use_case="vision-reject")
    assert throttled.status == "fail" and throttled.reasons[0].startswith("the firmware reported throttled")
    # vision-reject expects 10 per second; 8 back to back is not enough
    behind = verdict(_doc(throughput_ips=8.0), pi, use_case="vision-reject")
    assert behind.status == "fail" and "below the 10 per second vision-reject needs" in behind.reasons[0]
    paced = verdict(_doc(rate_hz=10.0, deadline_misses=3, late_runs=2), pi, use_case="vision-reject")
    assert paced.status == "fail" and paced.reasons[0].startswith("missed 3 deadlines at 10 Hz (2 of 700 runs")
    few = verdict(_doc(runs=30, valid=False, p90_early_stopping_ms=None, p99_early_stopping_ms=None), pi,
                  use_case="vision-reject")
    assert few.status == "warn" and few.reasons[0].startswith("only 30 timed runs")
    nobudget = verdict(_doc(), pi)
    assert nobudget.status == "warn" and "--use-case" in nobudget.reasons[0]
    with pytest.raises(ConfigError, match="available: ocr-label-check, predictive-maintenance, vision-reject"):
        verdict(_doc(), pi, use_case="nope")


def test_settings_validation_and_cache_location(home) -> None:
    with pytest.raises(ConfigError, match="either runs or a duration"):
        BenchSettings(runs=10, duration_s=5)
    with pytest.raises(ConfigError, match="rate_hz: must be a positive number, got 0"):
        BenchSettings(rate_hz=0)
    with pytest.raises(ConfigError, match="threads: .*greater than or equal to 0, got -1"):
        BenchSettings(threads=-1)
    assert BenchSettings(sustained=True).effective_duration_s == 600
    assert BenchSettings().effective_duration_s == 20
    assert bench_cache_dir(get_profile("generic-linux", home)) == "/var/lib/fieldkit/bench-cache"
    with pytest.raises(ConfigError, match="installed:NAME"):
        parse_model_spec("installed:../etc")


def test_agent_server_parses_as_python36() -> None:
    src = (ROOT / "fieldkit" / "agent" / "server.py").read_text()
    ast.parse(src, feature_version=(3, 6))


def test_a_benchmark_killed_on_the_device_is_explained(home, device_root: Path, models) -> None:
    # what the kernel's OOM killer does to a model too big for the device
    profile = get_profile("generic-linux", home)
    failure: list = []
    with connect(f"local:{device_root}", home) as link:
        def kill_when_running(ev: dict) -> None:
            if ev.get("phase") == "run" and not failure:
                failure.append("killed")
                for entry in processes_mentioning(f"{device_root}/{CACHE}"):
                    os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)

        with pytest.raises(DeviceError) as exc:
            run_bench(link, models[ANOMALY], BenchSettings(duration_s=60), profile=profile,
                      progress=kill_when_running)
        assert link.call("ping")  # the agent itself is fine
    assert failure == ["killed"]
    assert exc.value.code == "bench_crashed" and exc.value.exit_code == 4
    assert "the benchmark process was killed by SIGKILL (often the kernel's out-of-memory killer" in str(exc.value)
