#!/usr/bin/env python3
"""Generate the ONNX models fieldkit's benchmarks and tests run (a laptop/dev tool).

    python scripts/make_models.py OUTDIR [--only NAME]

The weights are random (fixed seeds, so the same script writes the same bytes), but the operators
and the amount of compute are real, so on-device timings look like the real thing:

* ``mobilenetv2-like.onnx`` - a MobileNetV2 (width 1.0, 224x224) image classifier: 17 inverted
  residual blocks (1x1 expand Conv + ReLU6, 3x3 depthwise Conv + ReLU6, 1x1 linear project Conv,
  residual Add), 1x1 Conv to 1280, global average pool, Gemm to 1000 classes, Softmax. BatchNorm
  is folded into the Conv biases, as exporters do. ~3.5 M parameters, ~300 M multiply-adds.
  Input ``input`` float32 [N,3,224,224] (batch dimension symbolic), output ``probabilities`` [N,1000].
* ``mobilenetv2-like-int8.onnx`` - the same network quantized by ``onnxruntime.quantization``:
  static QDQ quantization (uint8 activations, int8 per-channel weights, MinMax calibration on a
  few seeded random images).
* ``anomaly-tabular.onnx`` - a predictive-maintenance anomaly detector: input ``features`` float32
  [N,32] (vibration RMS, motor current, temperature, ...), an autoencoder MLP 32-16-8-16-32, and
  output ``score`` = mean squared reconstruction error per row, float32 [N,1].
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

NEEDS = ("scripts/make_models.py needs the onnx package, which fieldkit itself does not install: "
         "pip install -e '.[scripts]' in the fieldkit checkout (or pip install 'onnx>=1.15')")
try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # after the README's plain install: say what to install, no traceback
    print(f"error: {NEEDS}", file=sys.stderr)
    raise SystemExit(2) from None

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.10, which older device images still ship

MOBILENET = "mobilenetv2-like"
MOBILENET_INT8 = "mobilenetv2-like-int8"
ANOMALY = "anomaly-tabular"
NAMES = (MOBILENET, MOBILENET_INT8, ANOMALY)

# MobileNetV2 inverted residual settings: expansion t, output channels c, repeats n, stride s.
MOBILENETV2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class _Graph:
    """A small builder that keeps node and initializer lists and names things uniquely."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str | None = None, **attrs) -> str:
        out = self.name(prefix or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             act: bool = True, gain: float = 2.0) -> str:
        fan_in = (cin // group) * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(gain / fan_in)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.01).astype(np.float32)  # folded BatchNorm shift
        pad = k // 2
        y = self.node("Conv", [x, self.const("w", w), self.const("b", b)], "conv",
                      kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)
        if act:
            y = self.node("Clip", [y, self.relu6_lo, self.relu6_hi], "relu6")
        return y


def build_mobilenetv2(seed: int = 20240601) -> onnx.ModelProto:
    g = _Graph(seed)
    g.relu6_lo = g.const("relu6_min", np.array(0.0, dtype=np.float32))
    g.relu6_hi = g.const("relu6_max", np.array(6.0, dtype=np.float32))

    x = g.conv("input", 3, 32, 3, stride=2)
    cin = 32
    for t, c, n, s in MOBILENETV2_BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = g.conv(y, cin, hidden, 1)                      # 1x1 expand + ReLU6
            y = g.conv(y, hidden, hidden, 3, stride=stride, group=hidden)  # 3x3 depthwise + ReLU6
            y = g.conv(y, hidden, c, 1, act=False, gain=0.5)       # 1x1 linear project
            if stride == 1 and cin == c:
                y = g.node("Add", [x, y], "residual")
            x, cin = y, c
    x = g.conv(x, cin, 1280, 1)
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    fc_w = (g.rng.standard_normal((1000, 1280)) * np.sqrt(1.0 / 1280)).astype(np.float32)
    fc_b = np.zeros(1000, dtype=np.float32)
    x = g.node("Gemm", [x, g.const("fc_w", fc_w), g.const("fc_b", fc_b)], "logits", transB=1)
    g.nodes.append(helper.make_node("Softmax", [x], ["probabilities"], name="softmax_node", axis=1))

    graph = helper.make_graph(
        g.nodes, "mobilenetv2_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 1000])],
        initializer=g.inits,
    )
    return _finish(graph, "MobileNetV2-style classifier, random weights (fieldkit test model)")


def build_anomaly_tabular(seed: int = 20240602) -> onnx.ModelProto:
    g = _Graph(seed)
    sizes = (32, 16, 8, 16, 32)
    x = "features"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (g.rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        bias = (g.rng.standard_normal(b) * 0.01).astype(np.float32)
        x = g.node("MatMul", [x, g.const("w", w)], "dense")
        x = g.node("Add", [x, g.const("b", bias)], "dense_bias")
        if i < len(sizes) - 2:  # no activation on the reconstruction layer
            x = g.node("Relu", [x], "relu")
    diff = g.node("Sub", ["features", x], "residual")
    sq = g.node("Mul", [diff, diff], "squared")
    g.nodes.append(helper.make_node("ReduceMean", [sq], ["score"], name="score_node", axes=[1], keepdims=1))
    graph = helper.make_graph(
        g.nodes, "anomaly_tabular",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=g.inits,
    )
    return _finish(graph, "Autoencoder anomaly score for 32 sensor features, random weights (fieldkit test model)")


def _finish(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fieldkit-make-models", producer_version="1")
    model.ir_version = IR_VERSION
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


class _RandomImages:
    """Calibration data reader: a few seeded random 'images' in the 0..1 range."""

    def __init__(self, count: int = 8, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self._batches = [{"input": rng.random((1, 3, 224, 224), dtype=np.float32)} for _ in range(count)]
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_mobilenet(fp32_path: Path, out_path: Path) -> None:
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # quantize_static advises "pre-processing" (shape inference + graph optimisation) through the
    # root logger; this graph already has BatchNorm folded and needs neither, so keep the output clean.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32_path), str(out_path), _RandomImages(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            # A quantized Softmax output (fixed 0..1 range, 1/256 steps) rounds ~1e-3 probabilities to 0.
            nodes_to_exclude=["softmax_node"],
        )
    finally:
        root.setLevel(level)
    model = onnx.load(str(out_path))
    model.producer_name = "fieldkit-make-models"
    model.doc_string = "MobileNetV2-style classifier, static QDQ int8 (onnxruntime.quantization), random weights"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out_path))


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))


def build(outdir: Path | str, only: str | None = None) -> dict[str, Path]:
    """Write the models (or just ``only``) into ``outdir``; returns name -> path."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if only is not None:
        only = only[:-5] if only.endswith(".onnx") else only
        if only not in NAMES:
            raise SystemExit(f"unknown model {only!r}; choose from {', '.join(NAMES)}")
    wanted = NAMES if only is None else (only,)
    out: dict[str, Path] = {}
    builders: dict[str, Callable[[], onnx.ModelProto]] = {MOBILENET: build_mobilenetv2, ANOMALY: build_anomaly_tabular}
    for name in wanted:
        path = outdir / f"{name}.onnx"
        if name in builders:
            _save(builders[name](), path)
        else:  # int8: quantize the fp32 model (built into a scratch dir when it was not asked for)
            fp32 = outdir / f"{MOBILENET}.onnx"
            scratch = None
            if MOBILENET not in wanted:
                scratch = Path(tempfile.mkdtemp(prefix="fieldkit-models-"))
                fp32 = scratch / f"{MOBILENET}.onnx"
                _save(build_mobilenetv2(), fp32)
            try:
                quantize_mobilenet(fp32, path)
            finally:
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)
        out[name] = path
    return out


def _dims(vi: onnx.ValueInfoProto) -> str:
    dims = [d.dim_param or str(d.dim_value) for d in vi.type.tensor_type.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
    return f"{vi.name} {dtype}[{','.join(dims)}]"


def describe(path: Path) -> dict[str, str]:
    model = onnx.load(str(path))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {
        "name": path.name,
        "size": f"{path.stat().st_size / 1e6:.2f} MB",
        "params": f"{params / 1e6:.2f} M" if params >= 100_000 else f"{params:,}",
        "inputs": "; ".join(_dims(v) for v in model.graph.input),
        "outputs": "; ".join(_dims(v) for v in model.graph.output),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--only", metavar="NAME", help=f"build one model: {', '.join(NAMES)}")
    args = parser.parse_args(argv)
    paths = build(args.outdir, args.only)
    rows = [describe(p) for p in paths.values()]
    cols = ("name", "size", "params", "inputs", "outputs")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
    print(f"written to {os.path.abspath(args.outdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
