"""The model, its onnxruntime session and its inputs, for the benchmark (Python 3.6 syntax).

numpy and onnxruntime are imported only here and only when a benchmark runs
(:func:`import_runtime`), so the agent and a device without them import this module freely; every
failure is a :class:`~fieldkit.agent.benchsettings.BenchError` with a code the laptop understands.
"""

import hashlib
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from fieldkit.agent.benchsettings import BenchError, Settings  # noqa: F401  (Settings: type comments)

# Integer-nanosecond clocks; Python 3.6 (JetPack 4) has only the float ones.
perf_counter_ns = getattr(time, "perf_counter_ns", None) or (lambda: int(time.perf_counter() * 1e9))
process_time_ns = getattr(time, "process_time_ns", None) or (lambda: int(time.process_time() * 1e9))

# onnxruntime input type -> numpy dtype name
ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


# --- model and inputs ----------------------------------------------------------------------------

def model_facts(path):
    # type: (str) -> Dict[str, Any]
    if not os.path.exists(path):
        raise BenchError("model_not_found", "model file %s not found on the device: check the path, or deploy "
                         "the model first" % path)
    if not os.path.isfile(path):
        raise BenchError("model_not_found", "%s is not a file: give the path of the .onnx file" % path)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise BenchError("model_unreadable", "cannot read %s: %s" % (path, exc.strerror or exc))
    return {"path": os.path.abspath(path), "sha256": digest.hexdigest(), "size_bytes": size}


def import_runtime():
    # type: () -> Tuple[Any, Any]
    try:
        import numpy
    except ImportError:
        raise BenchError("numpy_missing", "numpy is not installed on the device: pip install numpy, or use a "
                         "profile/image that ships it")
    try:
        import onnxruntime
    except ImportError:
        raise BenchError("onnxruntime_missing", "onnxruntime is not installed on the device: pip install "
                         "onnxruntime, or use a profile/image that ships it")
    except Exception as exc:  # e.g. a wheel built for another CPU or glibc
        raise BenchError("onnxruntime_broken", "onnxruntime is installed but fails to load (%s: %s): reinstall "
                         "it for this device's Python and CPU" % (type(exc).__name__, exc))
    return numpy, onnxruntime


def ort_detail(exc):
    # type: (BaseException) -> str
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from x failed:Protobuf parsing failed."
    if text.startswith("[ONNXRuntimeError]"):
        parts = text.split(" : ", 3)
        if len(parts) == 4:
            text = "%s: %s" % (parts[2], parts[3])
    return text[:300]


def create_session(ort, args, facts):
    # type: (Any, Settings, Dict[str, Any]) -> Tuple[Any, float]
    available = list(ort.get_available_providers())
    for p in args.providers:
        if p not in available:
            raise BenchError("unknown_provider", "execution provider %r is not available on this device "
                             "(onnxruntime %s has: %s)" % (p, ort.__version__, ", ".join(available)))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = args.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if args.spin == "on" else "0")
    so.log_severity_level = 3  # errors only: warnings would go to stderr on every run
    name = os.path.basename(args.model)
    if facts["size_bytes"] == 0:
        raise BenchError("invalid_model", "%s is empty (0 bytes): re-copy it" % name, sha256=facts["sha256"])
    t0 = perf_counter_ns()
    try:
        sess = ort.InferenceSession(args.model, sess_options=so, providers=list(args.providers))
    except Exception as exc:
        kind = type(exc).__name__
        detail = ort_detail(exc)
        low = detail.lower()
        if kind in ("InvalidProtobuf", "InvalidGraph") or "protobuf" in low or "no graph was found" in low:
            raise BenchError("invalid_model", "%s is not a valid ONNX model (%s): re-copy it or check the file's "
                             "sha256 (on the device: %s)" % (name, detail, facts["sha256"]), sha256=facts["sha256"])
        if kind == "NotImplemented":
            raise BenchError("unsupported_model", "onnxruntime %s on this device cannot run %s (%s): export the "
                             "model for an older opset or update onnxruntime" % (ort.__version__, name, detail))
        raise BenchError("session_failed", "onnxruntime could not load %s (%s)" % (name, detail))
    create_ms = (perf_counter_ns() - t0) / 1e6
    active = list(sess.get_providers())
    missing = [p for p in args.providers if p not in active]
    if missing:
        raise BenchError("provider_failed", "execution provider %s did not start for %s (session runs on: %s); "
                         "check its libraries/drivers on the device" % (", ".join(missing), name, ", ".join(active)))
    return sess, create_ms


def _dims_text(shape):
    # type: (List[Any]) -> str
    return "[%s]" % ",".join(str(d) if isinstance(d, int) else (d or "?") for d in shape)


def _concrete(name, model_shape, given):
    # type: (str, List[Any], Optional[List[int]]) -> List[int]
    """Resolve ``model_shape`` (ints, names or None) with ``given``; symbolic dims default to 1."""
    if given is None:
        return [d if isinstance(d, int) and d > 0 else 1 for d in model_shape]
    ok = len(given) == len(model_shape) and all(
        not (isinstance(m, int) and m > 0) or m == g for m, g in zip(model_shape, given))
    if not ok:
        raise BenchError("shape_mismatch", "input '%s' expects %s; got %s"
                         % (name, _dims_text(model_shape), "x".join(str(g) for g in given)))
    return list(given)


def prepare_inputs(np, sess, args):
    # type: (Any, Any, Settings) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]
    model_inputs = sess.get_inputs()
    names = [i.name for i in model_inputs]
    for name in args.shapes:
        if name not in names:
            raise BenchError("bad_shape", "shapes names input '%s', but the model's inputs are: %s"
                             % (name, ", ".join(names)))
    arrays = None
    if args.inputs:
        arrays = load_npz(np, args.inputs, names)
    rng = np.random.default_rng(args.seed)
    feeds = {}
    described = []
    for inp in model_inputs:
        dtype = ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise BenchError("unsupported_input", "input '%s' has type %s, which bench cannot feed" % (inp.name, inp.type))
        model_shape = list(inp.shape)
        if arrays is not None:
            arr = arrays[inp.name]
            if arr.dtype.name != dtype:
                raise BenchError("inputs_dtype", "%s: array '%s' is %s; the model expects %s"
                                 % (os.path.basename(args.inputs), inp.name, arr.dtype.name, dtype))
            shape = _concrete(inp.name, model_shape, list(arr.shape))
            if inp.name in args.shapes and args.shapes[inp.name] != shape:
                raise BenchError("shape_mismatch", "shapes: %s=%s disagrees with the array in %s (%s)" % (
                    inp.name, "x".join(map(str, args.shapes[inp.name])), os.path.basename(args.inputs),
                    "x".join(map(str, shape))))
            feeds[inp.name] = np.ascontiguousarray(arr)
        else:
            shape = _concrete(inp.name, model_shape, args.shapes.get(inp.name))
            feeds[inp.name] = random_array(np, rng, shape, dtype)
        described.append({"name": inp.name, "shape": shape, "dtype": dtype, "model_shape": model_shape})
    return feeds, described


def random_array(np, rng, shape, dtype):
    # type: (Any, Any, List[int], str) -> Any
    if dtype.startswith("float"):
        return rng.random(shape, dtype=np.float32 if dtype == "float16" else dtype).astype(dtype)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    return rng.integers(0, 2, size=shape).astype(dtype)  # 0/1: valid ids, masks and indices


def load_npz(np, path, names):
    # type: (Any, str, List[str]) -> Dict[str, Any]
    base = os.path.basename(path)
    if not os.path.isfile(path):
        raise BenchError("inputs_not_found", "inputs file %s not found on the device" % path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise BenchError("inputs_invalid", "%s is not a readable .npz file (%s): save it with numpy.savez" % (base, exc))
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BenchError("inputs_missing", "%s has no array for input(s) %s (it has: %s)" % (
            base, ", ".join("'%s'" % m for m in missing), ", ".join(sorted(arrays)) or "nothing"))
    return arrays
