"""The smoke test of the active model (Python 3.6 syntax; the child needs numpy and onnxruntime).

``model_smoke {name}`` runs the active release's signed smoke set (``smoke/inputs.npz`` through the
model, compared with ``smoke/outputs.npz``, both made on the laptop with onnxruntime) the way the
benchmark runs: a process of its own (``fieldkit-agent smoke --settings-json JSON``), in its own
process group, ended with the request (:class:`fieldkit.agent.benchproc.BenchProcess`). Each output
is compared with numpy.allclose semantics (``|actual - reference| <= atol + rtol * |reference|``,
NaN never equal); the answer gives the largest absolute and relative difference per output (the
relative one over the reference's non-zero elements; null when not finite) and the median latency
of a few runs after one warm-up, against the release's ``budget_ms``.
"""

import importlib.util
import json
import os
import sys
import time

from fieldkit.agent.protocol import RemoteError

TIMED_RUNS = 5
MAX_TIMED_S = 10.0


def smoke_op(store, req, on_result):
    from fieldkit.agent.benchproc import BenchProcess, bench_command
    from fieldkit.agent.releasefmt import check_model_name, model_path
    from fieldkit.agent.staging import read_release

    name = check_model_name(req.args.get("name"))
    real = store.version_dir(name)
    version = os.path.basename(real)
    release = read_release(store, real, store.where(real))
    smoke = release.get("smoke")
    if not isinstance(smoke, dict):
        raise RemoteError("no_smoke_set", "%s %s was released without a smoke set (no_smoke); nothing to run"
                          % (name, version))
    missing = [m for m in ("onnxruntime", "numpy") if importlib.util.find_spec(m) is None]
    if missing:
        raise RemoteError("no_onnxruntime", "this device has no %s, so the smoke test cannot run here"
                          % " or ".join(missing))

    def full(rel):
        path = os.path.join(real, *rel.split("/"))
        if not os.path.isfile(path) or os.path.islink(path):
            raise RemoteError("no_smoke_set", "%s/%s is missing" % (store.where(real), rel))
        return path

    settings = {"model": full(model_path(release)), "inputs": full(smoke["inputs"]),
                "outputs": full(smoke["outputs"]), "atol": float(smoke["atol"]), "rtol": float(smoke["rtol"]),
                "budget_ms": smoke.get("budget_ms")}
    cmd = bench_command("smoke") + ["--settings-json", json.dumps(settings)]
    run = BenchProcess(cmd, cwd=store.fs.root, what="smoke test")
    try:
        result = run.relay(req)
    finally:
        run.stop()
    out = dict((k, result.get(k)) for k in ("passed", "message", "outputs", "latency_ms", "budget_ms"))
    out["version"] = version
    on_result(name, version, out)
    return out


# ---- the child process ----------------------------------------------------------------------------
def _emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(x):
    return x if x == x and x not in (float("inf"), float("-inf")) else None


def compare(np, name, actual, reference, atol, rtol):
    a = np.asarray(actual)
    b = np.asarray(reference)
    entry = {"name": name, "max_abs_diff": None, "max_rel_diff": None, "ok": False}
    if a.shape != b.shape:
        entry["problem"] = "shape %s, reference %s" % (list(a.shape), list(b.shape))
        return entry
    try:
        a64 = a.astype(np.float64)
        b64 = b.astype(np.float64)
    except (TypeError, ValueError):
        entry["ok"] = bool(np.array_equal(a, b))
        return entry
    diff = np.abs(a64 - b64)
    entry["max_abs_diff"] = _finite(float(diff.max())) if diff.size else 0.0
    nz = np.abs(b64) > 0
    if nz.any():
        entry["max_rel_diff"] = _finite(float((diff[nz] / np.abs(b64[nz])).max()))
    else:
        entry["max_rel_diff"] = 0.0 if entry["max_abs_diff"] == 0.0 else None
    entry["ok"] = bool(np.allclose(a64, b64, rtol=rtol, atol=atol, equal_nan=False))
    return entry


def main(argv):
    if len(argv) != 2 or argv[0] != "--settings-json":
        _emit({"event": "error", "code": "bad_arguments", "message": "usage: smoke --settings-json JSON"})
        return 2
    try:
        s = json.loads(argv[1])
        import numpy as np
        import onnxruntime as ort
    except ImportError as exc:
        _emit({"event": "error", "code": "no_onnxruntime", "message": "cannot import %s" % exc.name})
        return 2
    except ValueError:
        _emit({"event": "error", "code": "bad_arguments", "message": "settings are not JSON"})
        return 2
    try:
        sess = ort.InferenceSession(s["model"], providers=["CPUExecutionProvider"])
        with np.load(s["inputs"], allow_pickle=False) as z:
            feeds = dict((k, z[k]) for k in z.files)
        with np.load(s["outputs"], allow_pickle=False) as z:
            refs = dict((k, z[k]) for k in z.files)
    except Exception as exc:  # a broken model or npz: an answer, not a traceback
        _emit({"event": "error", "code": "smoke_failed", "message": "cannot load the smoke set or the model: %s: %s"
               % (type(exc).__name__, str(exc)[:300])})
        return 2
    want = [i.name for i in sess.get_inputs()]
    missing = [n for n in want if n not in feeds]
    if missing:
        _emit({"event": "error", "code": "smoke_failed", "message": "smoke inputs lack %s (the model takes %s)"
               % (", ".join(missing), ", ".join(want))})
        return 2
    feeds = dict((n, feeds[n]) for n in want)
    names = [o.name for o in sess.get_outputs()]
    try:
        first = sess.run(None, feeds)
        times = []
        started = time.perf_counter()
        while len(times) < TIMED_RUNS and time.perf_counter() - started < MAX_TIMED_S:
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1000.0)
    except Exception as exc:
        _emit({"event": "error", "code": "smoke_failed", "message": "the model failed on the smoke inputs: %s: %s"
               % (type(exc).__name__, str(exc)[:300])})
        return 2
    outputs = []
    for name in sorted(refs):
        if name not in names:
            outputs.append({"name": name, "max_abs_diff": None, "max_rel_diff": None, "ok": False,
                            "problem": "the model has no output %s" % name})
            continue
        outputs.append(compare(np, name, first[names.index(name)], refs[name], s["atol"], s["rtol"]))
    times.sort()
    latency = times[len(times) // 2] if times else None
    budget = s.get("budget_ms")
    bad = [o["name"] for o in outputs if not o["ok"]]
    slow = budget is not None and latency is not None and latency > budget
    if not outputs:
        message = "the reference outputs compare nothing"
    elif bad:
        message = "outputs differ from the reference beyond atol %g / rtol %g: %s" % (s["atol"], s["rtol"],
                                                                                     ", ".join(bad))
    elif slow:
        message = "outputs match, but the median latency %.2f ms is over the budget of %g ms" % (latency, budget)
    else:
        message = "%d output(s) match the reference%s" % (
            len(outputs), "" if budget is None else "; latency %.2f ms within %g ms" % (latency, budget))
    _emit({"event": "result", "passed": bool(outputs) and not bad and not slow, "message": message,
           "outputs": outputs, "latency_ms": latency, "budget_ms": budget})
    return 0
