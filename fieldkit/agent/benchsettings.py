"""The benchmark's settings: declared once, checked once (stdlib only, Python 3.6 syntax).

The agent's ``bench`` operation (:mod:`fieldkit.agent.benchproc`) checks the laptop's arguments
against :data:`SETTINGS` before it starts the benchmark process (:mod:`fieldkit.agent.benchrun`),
which checks them again from ``--settings-json`` or from the command-line flags derived from the same
table. Kept apart from the benchmark itself so the agent validates without loading the timing code.
"""

import argparse
import json
from typing import Any, Dict, List


class BenchError(Exception):
    """A failure the technician can act on: ``code`` for programs, ``message`` for people."""

    def __init__(self, code, message, **extra):
        # type: (str, str, Any) -> None
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra



# --- settings ------------------------------------------------------------------------------------
#
# Declared once: the agent checks the laptop's ``bench`` arguments against this table and hands
# them to this process as JSON (``bench --settings-json '{...}'``); the command-line flags below are
# derived from the same table for running the benchmark by hand. Messages name settings by key.

class Setting(object):
    __slots__ = ("key", "kind", "default", "flag", "metavar", "help", "lo", "hi", "choices")

    def __init__(self, key, kind, default, flag, metavar, help, lo=None, hi=None, choices=None):
        self.key, self.kind, self.default, self.flag, self.metavar = key, kind, default, flag, metavar
        self.help, self.lo, self.hi, self.choices = help, lo, hi, choices


SETTINGS = (
    Setting("model", "path", None, "--model", "PATH", "the .onnx file (required)"),
    Setting("warmup", "int", 10, "--warmup", "N", "untimed warm-up runs; the first is reported as first_run_ms "
            "(default 10; at least 1 always runs)", lo=0, hi=10 ** 6),
    Setting("runs", "int", None, "--runs", "N", "stop after N timed runs (duration_s is then not used)", lo=1,
            hi=10 ** 9),
    Setting("duration_s", "float", None, "--duration", "S", "run for S seconds and at least min_runs runs "
            "(default 20)", hi=30 * 86400.0),
    Setting("min_runs", "int", 64, "--min-runs", "N", "with duration_s, keep going until N runs (default 64, "
            "MLPerf's p90 minimum)", lo=1, hi=10 ** 9),
    Setting("max_seconds", "float", None, "--max-seconds", "S", "hard limit on the timed loop (default 3 x "
            "duration_s + 60; 120 with runs)", hi=90 * 86400.0),
    Setting("threads", "int", 0, "--threads", "N", "intra-op threads (0 = onnxruntime's default)", lo=0, hi=4096),
    Setting("rate_hz", "float", None, "--rate", "HZ", "pace runs at HZ per second and count deadline misses",
            hi=1e6),
    Setting("shapes", "shapes", None, "--shape", "NAME=DIMS", "concrete shape for an input with symbolic dims, "
            "e.g. input=1x3x224x224 (repeatable)"),
    Setting("inputs", "path", None, "--inputs", "FILE.npz", "input arrays by input name (default: seeded random "
            "data)"),
    Setting("seed", "int", 0, "--seed", "N", "seed for the random inputs (default 0)", lo=0, hi=2 ** 63 - 1),
    Setting("spin", "choice", "on", "--spin", None, "let intra-op threads spin between runs (onnxruntime's "
            "default: on)", choices=("on", "off")),
    Setting("providers", "providers", None, "--provider", "P", "execution provider, in priority order "
            "(repeatable; default CPUExecutionProvider)"),
    Setting("progress_interval_s", "float", 0.5, "--progress-interval", "S", "seconds between progress lines "
            "(default 0.5)", hi=3600.0),
)
SETTING_KEYS = tuple(s.key for s in SETTINGS)
MAX_SHAPES = 64
MAX_DIMS = 16
MAX_PROVIDERS = 16


class Settings(object):
    """Checked settings, one attribute per key of :data:`SETTINGS`."""

    def __init__(self, values):
        for key, value in values.items():
            setattr(self, key, value)

    def as_json(self):
        return dict((k, getattr(self, k)) for k in SETTING_KEYS if k not in ("duration_given",))


def _number_text(value):
    return repr(value) if not isinstance(value, str) else repr(value[:40])


def check_settings(raw, need_model=True):
    # type: (Dict[str, Any], bool) -> Settings
    """Check a settings dict (keys of :data:`SETTINGS`) and fill in defaults; BenchError
    ``bad_arguments`` naming the key otherwise, e.g. "threads must be a whole number >= 0, got -1"."""
    from fieldkit.agent import fields
    from fieldkit.agent.protocol import RemoteError

    if not isinstance(raw, dict):
        raise BenchError("bad_arguments", "bench settings must be an object")
    unknown = sorted(str(k)[:40] for k in raw if k not in SETTING_KEYS)
    if unknown:
        raise BenchError("bad_arguments", "unknown bench setting(s): %s" % ", ".join(unknown))
    out = {}
    try:
        for s in SETTINGS:
            if s.kind == "int":
                out[s.key] = fields.get_int(raw, s.key, s.default, lo=s.lo, hi=s.hi)
            elif s.kind == "float":
                out[s.key] = fields.get_float(raw, s.key, s.default, hi=s.hi, positive=True)
            elif s.kind == "path":
                out[s.key] = fields.get_str(raw, s.key, s.default)
            elif s.kind == "choice":
                out[s.key] = fields.get_str(raw, s.key, s.default, limit=20, choices=s.choices)
            elif s.kind == "shapes":
                out[s.key] = _check_shapes(raw.get(s.key))
            elif s.kind == "providers":
                out[s.key] = _check_providers(raw.get(s.key))
    except RemoteError as exc:
        raise BenchError("bad_arguments", exc.message)
    if need_model and out["model"] is None:
        raise BenchError("bad_arguments", "model is required: the path of the .onnx file")
    if out["runs"] is not None:
        out["duration_s"] = None  # runs decides; a duration sent along is checked but not used
    out["duration_given"] = out["duration_s"] is not None
    if out["duration_s"] is None:
        out["duration_s"] = 20.0
    if out["max_seconds"] is None:
        out["max_seconds"] = 3 * out["duration_s"] + 60
    if not out["providers"]:
        out["providers"] = ["CPUExecutionProvider"]
    return Settings(out)


def _check_shapes(value):
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_SHAPES:
        raise BenchError("bad_arguments", "shapes must map up to %d input names to lists of dimensions" % MAX_SHAPES)
    shapes = {}
    for name, dims in value.items():
        if not isinstance(name, str) or not name or len(name) > 200:
            raise BenchError("bad_arguments", "shapes: input names must be non-empty texts")
        ok = isinstance(dims, list) and 0 < len(dims) <= MAX_DIMS and all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d < 2 ** 31 for d in dims)
        if not ok:
            raise BenchError("bad_shape", "shapes: the shape of input '%s' must be a list of 1 to %d positive whole "
                             "numbers, e.g. [1, 3, 224, 224], got %s" % (name[:80], MAX_DIMS, _number_text(dims)[:80]))
        shapes[name] = list(dims)
    return shapes


def _check_providers(value):
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PROVIDERS or not all(
            isinstance(p, str) and p and len(p) <= 100 for p in value):
        raise BenchError("bad_arguments", "providers must be a list of up to %d execution provider names"
                         % MAX_PROVIDERS)
    return list(value)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # type: ignore[override]
        raise BenchError("bad_arguments", "bench: %s (see --help)" % message)


def build_parser():
    # type: () -> argparse.ArgumentParser
    """Flags for a run by hand, derived from :data:`SETTINGS` (plus ``--settings-json``)."""
    p = _Parser(prog="fieldkit-agent bench", description="Benchmark an ONNX model on this device; "
                "prints JSON lines (started, progress, result or error).")
    p.add_argument("--settings-json", metavar="JSON", help="all settings as one JSON object (keys: %s); "
                   "how the agent starts the benchmark" % ", ".join(SETTING_KEYS))
    for s in SETTINGS:
        repeat = s.kind in ("shapes", "providers")
        p.add_argument(s.flag, dest=s.key, metavar=s.metavar, help=s.help, choices=s.choices,
                       action="append" if repeat else "store", default=None)
    return p


def _from_text(kind, text):
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        return text  # check_settings names the key and the bad value


def parse_args(argv):
    # type: (List[str]) -> Settings
    ns = build_parser().parse_args(argv)
    given = dict((s.key, getattr(ns, s.key)) for s in SETTINGS if getattr(ns, s.key) is not None)
    if ns.settings_json is not None:
        if given:
            raise BenchError("bad_arguments", "give either --settings-json or flags, not both")
        try:
            raw = json.loads(ns.settings_json)
        except (ValueError, RecursionError) as exc:
            raise BenchError("bad_arguments", "--settings-json is not valid JSON: %s" % str(exc)[:200])
        return check_settings(raw)
    raw = {}
    for s in SETTINGS:
        value = given.get(s.key)
        if value is None:
            continue
        if s.kind in ("int", "float"):
            value = _from_text(s.kind, value)
        elif s.kind == "shapes":
            value = dict(_parse_shape(item) for item in value)
        raw[s.key] = value
    return check_settings(raw)


def _parse_shape(item):
    name, sep, dims = item.rpartition("=")
    if not sep or not name:
        raise BenchError("bad_shape", "--shape %s: write NAME=DIMS, e.g. input=1x3x224x224" % item)
    try:
        values = [int(d) for d in dims.replace(",", "x").split("x")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise BenchError("bad_shape", "--shape %s: dimensions must be positive whole numbers separated "
                         "by x, e.g. %s=1x3x224x224" % (item, name))
    return name, values
