"""Release directories: ``release.json``, the smoke set, keys, signing and verification.

A release (docs/releases.md) is a directory holding the model, ``release.json``, an optional smoke
set (``smoke/inputs.npz`` and the reference ``smoke/outputs.npz`` computed here with onnxruntime)
and ``model.sig``, the OpenSSF Model Signing signature over every other file (:mod:`fieldkit.oms`).

* :class:`ReleaseManifest` validates ``release.json``; errors name the file, the key and what was
  expected (``defects-2.1.0/release.json: version: expected semver MAJOR.MINOR.PATCH, got '2.1'``).
* :func:`parse_version` / :func:`compare_versions`: semver 2.0 precedence, for the install path.
* :func:`keygen`, :func:`create_release`, :func:`sign_release`, :func:`verify_release`.

numpy and onnxruntime are imported only by :func:`create_release`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import total_ordering
from pathlib import Path
from typing import Any, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fieldkit import oms, signing
from fieldkit.errors import ConfigError
from fieldkit.fsutil import atomic_open, atomic_write, fsync_dir

__all__ = [
    "RELEASE_JSON", "SMOKE_INPUTS", "SMOKE_OUTPUTS", "ReleaseError", "SmokeSpec", "InputSpec", "ReleaseManifest",
    "Version", "parse_version", "compare_versions", "KeyPair", "public_key_path_for", "keygen",
    "load_manifest", "ReleaseInfo", "VerifiedRelease", "create_release", "sign_release", "verify_release",
]

RELEASE_JSON = "release.json"
SMOKE_INPUTS = "smoke/inputs.npz"
SMOKE_OUTPUTS = "smoke/outputs.npz"
MAX_RELEASE_JSON = 1 << 20
MAX_SMOKE_RANDOM = 4096
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER_RE = re.compile(rf"({_NUM})\.({_NUM})\.({_NUM})(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?")
RESERVED = (RELEASE_JSON, oms.SIGNATURE_NAME)


class ReleaseError(ConfigError):
    """A release directory or its release.json is not valid (exit 2 when making one)."""


# --- semver --------------------------------------------------------------------------------------

@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A semver 2.0 version. Ordering and equality follow semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    def _key(self) -> tuple:
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        # a version without pre-release ranks above every pre-release of the same MAJOR.MINOR.PATCH
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        return text + (f"+{self.build}" if self.build else "")


def parse_version(text: Any) -> Version:
    """A semver ``MAJOR.MINOR.PATCH[-pre][+build]``; ValueError saying what was expected otherwise."""
    if not isinstance(text, str) or len(text) > 128 or not SEMVER_RE.fullmatch(text):
        shown = repr(text) if not isinstance(text, str) or len(text) <= 64 else repr(text[:61] + "...")
        raise ValueError(f"expected semver MAJOR.MINOR.PATCH, got {shown}")
    m = SEMVER_RE.fullmatch(text)
    assert m is not None
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, m.group(5) or "")


def compare_versions(a: str | Version, b: str | Version) -> int:
    """-1, 0 or 1 as ``a`` ranks below, equal to or above ``b`` (semver 2.0 precedence)."""
    va = a if isinstance(a, Version) else parse_version(a)
    vb = b if isinstance(b, Version) else parse_version(b)
    return (va > vb) - (va < vb)


# --- release.json ----------------------------------------------------------------------------------

def _relative_file(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {value!r}")
    if value.startswith("/") or "\x00" in value or "\\" in value:
        raise ValueError(f"expected {what}, got {value!r} (an absolute path or odd characters)")
    why = oms.name_problem(value)
    if why is not None:
        raise ValueError(f"expected {what}, got {value!r} ({why})")
    if value in RESERVED:
        raise ValueError(f"expected {what}, got {value!r} (reserved for the release itself)")
    return value


class SmokeSpec(BaseModel):
    """The smoke set: golden inputs and the reference outputs, and how close the device must come."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    inputs: str = SMOKE_INPUTS
    """``.npz`` of inputs by input name (one run of the model), relative to the release."""
    outputs: str = SMOKE_OUTPUTS
    """``.npz`` of reference outputs by output name, computed on the laptop with onnxruntime (CPU)."""
    atol: float = Field(default=1e-4, ge=0, allow_inf_nan=False)
    """Absolute tolerance: ``|device - reference| <= atol + rtol * |reference|``."""
    rtol: float = Field(default=1e-3, ge=0, allow_inf_nan=False)
    """Relative tolerance (see ``atol``)."""
    budget_ms: Optional[float] = Field(default=None, gt=0, allow_inf_nan=False)
    """Latency budget of one smoke run on the device, or none."""

    @field_validator("inputs", "outputs", mode="before")
    @classmethod
    def _rel(cls, v: Any) -> str:
        return _relative_file(v, "a relative file name inside the release")

    @field_validator("atol", "rtol", "budget_ms", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"expected a number, got {v!r}")
        return v


class InputSpec(BaseModel):
    """One model input: name, shape (numbers; names or null for symbolic dimensions) and dtype."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    name: str
    shape: list[Optional[int | str]]
    dtype: str


class ReleaseManifest(BaseModel):
    """``release.json`` (docs/releases.md). Reading accepts the older ``model_file`` for ``model``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    """Model name, the directory under ``models/`` on the device."""
    version: str
    """Semver ``MAJOR.MINOR.PATCH[-pre][+build]``."""
    security_version: int = 0
    """Anti-rollback counter: a device never installs a release below its floor."""
    model: str
    """The file to run, relative to the release directory."""
    profiles: list[str] = Field(default_factory=list)
    """Profiles (device kinds) the release is meant for."""
    inputs: Optional[list[InputSpec]] = None
    """The model's input spec."""
    smoke: Optional[SmokeSpec] = None
    """The smoke set, or null with ``no_smoke``."""
    no_smoke: bool = False
    """True when the release was made without a smoke set (``--no-smoke``)."""
    notes: str = ""
    created: Optional[str] = None
    created_by: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _older_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" not in data and "model_file" in data:
            data = dict(data)
            data["model"] = data.pop("model_file")
        return data

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> str:
        if not isinstance(v, str) or not NAME_RE.fullmatch(v):
            raise ValueError("expected 1-64 letters, digits or . _ + - starting with a letter or digit, "
                             f"got {v!r}"[:200])
        return v

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> str:
        parse_version(v)
        return v

    @field_validator("security_version", mode="before")
    @classmethod
    def _security_version(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 63:
            shown = repr(v) if not isinstance(v, int) or abs(v) < 10 ** 20 else "a huge number"
            raise ValueError(f"expected an integer >= 0, got {shown}")
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> str:
        return _relative_file(v, "a relative file name inside the release (no '..')")

    @field_validator("profiles", mode="before")
    @classmethod
    def _profiles(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(p, str) and NAME_RE.fullmatch(p) for p in v):
            raise ValueError(f"expected a list of profile names, got {v!r}"[:200])
        return v

    @field_validator("no_smoke", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError(f"expected true or false, got {v!r}")
        return v

    @model_validator(mode="after")
    def _smoke_or_not(self) -> "ReleaseManifest":
        if self.smoke is None and not self.no_smoke:
            raise ValueError("smoke: missing; expected a smoke object, or \"no_smoke\": true for a release "
                             "made without a smoke set")
        if self.smoke is not None and self.no_smoke:
            raise ValueError("smoke: expected null when \"no_smoke\" is true (it is both)")
        return self

    @property
    def parsed_version(self) -> Version:
        return parse_version(self.version)


_EXPECTED = {
    "notes": "a string", "created": "a string", "created_by": "a string", "inputs": "a list of {name, shape, dtype}",
    "smoke": "an object {inputs, outputs, atol, rtol, budget_ms} or null", "name": "a model name",
    "version": "a semver string", "model": "a relative file name", "security_version": "an integer >= 0",
}


_TYPE_WORDS = {
    "model_type": "an object", "dict_type": "an object", "model_attributes_type": "an object",
    "list_type": "a list", "string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
    "int_parsing": "an integer", "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "finite_number": "a finite number",
}


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]]
        key = "".join(p if p.startswith("[") or i == 0 else "." + p for i, p in enumerate(loc))
        kind = err["type"]
        if kind == "value_error":
            msg = str((err.get("ctx") or {}).get("error", err["msg"]))
            if not key:  # a model-level rule: the message names its key
                lines.append(f"{source}: {msg}")
                continue
        elif kind == "missing":
            top = key.split(".")[0].split("[")[0]
            msg = f"missing; expected {_EXPECTED.get(top, 'a value')}"
        elif kind in _TYPE_WORDS:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, (dict, list)) else ("an object" if isinstance(value, dict)
                                                                              else "a list")
            msg = f"expected {_TYPE_WORDS[kind]}, got {shown[:80]}"
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            msg = f"{err['msg'].lower()}, got {shown[:80]}"
        lines.append(f"{source}: {key or '(top level)'}: {msg}")
    return "\n".join(lines)


def validate_manifest(doc: Any, source: str) -> ReleaseManifest:
    """``doc`` as a ReleaseManifest; ReleaseError naming ``source``, the key and what was expected."""
    try:
        return ReleaseManifest.model_validate(doc)
    except ValidationError as exc:
        raise ReleaseError(_format_errors(source, exc)) from None


def load_manifest(directory: Path | str) -> ReleaseManifest:
    """Read and validate ``directory/release.json``, and check that the files it names are in the directory."""
    directory = Path(directory)
    path = directory / RELEASE_JSON
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise ReleaseError(f"{directory} has no {RELEASE_JSON}; it is not a release directory",
                           hint="make one with `fieldkit release create`") from None
    except OSError as exc:
        raise ReleaseError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ReleaseError(f"{path} is not a regular file")
    if st.st_size > MAX_RELEASE_JSON:
        raise ReleaseError(f"{path}: too large ({st.st_size} bytes)")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ReleaseError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise ReleaseError(f"{path}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise ReleaseError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    manifest = validate_manifest(doc, str(path))
    key = "model" if "model" in doc else "model_file"
    _require_file(directory, manifest.model, f"{path}: {key}")
    if manifest.smoke is not None:
        _require_file(directory, manifest.smoke.inputs, f"{path}: smoke.inputs")
        _require_file(directory, manifest.smoke.outputs, f"{path}: smoke.outputs")
    return manifest


def _require_file(directory: Path, rel: str, where: str) -> None:
    p = directory / rel
    if p.is_symlink():
        raise ReleaseError(f"{where}: {rel!r} is a symbolic link; a release holds plain files only")
    if not p.is_file():
        raise ReleaseError(f"{where}: {rel!r} is not a file in the release directory {directory}")


# --- keys ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    fingerprint: str
    hint: str


def public_key_path_for(private: Path | str) -> Path:
    """``rel.pem`` -> ``rel.pub.pem`` (``.pub.pem`` appended when the name does not end in ``.pem``)."""
    private = Path(private)
    if private.name.endswith(".pem"):
        return private.with_name(private.name[: -len(".pem")] + ".pub.pem")
    return private.with_name(private.name + ".pub.pem")


def keygen(out: Path | str, *, force: bool = False) -> KeyPair:
    """A new ECDSA P-256 release key: ``out`` (PKCS#8 PEM, 0600) and its public key beside it
    (``.pub.pem``, 0644), both written atomically. An existing key is kept unless ``force``."""
    out = Path(out)
    pub = public_key_path_for(out)
    if out.name.endswith(".pub.pem"):
        raise ConfigError(f"{out}: that name is for the public key; give the private key's name (e.g. release.pem)")
    for p in (out, pub):
        if (p.exists() or p.is_symlink()) and not force:
            raise ConfigError(f"{p} already exists; not overwriting a key",
                              hint="choose another name, or pass --force to replace it (the old key is lost)")
    if out.parent.exists() and not out.parent.is_dir():
        raise ConfigError(f"{out.parent} is not a directory")
    key = signing.generate_private_key()
    signing.write_private_key(out, key)
    atomic_write(pub, signing.public_key_pem(key), mode=0o644)
    return KeyPair(private=out, public=pub, fingerprint=signing.key_fingerprint(key.public_key()),
                   hint=oms.public_key_hint(key))


# --- results ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReleaseInfo:
    """A release that was just made or signed."""

    directory: Path
    manifest: ReleaseManifest
    digest: str
    signer: str
    hint: str
    files: tuple[oms.FileDigest, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class VerifiedRelease:
    """A release whose signature, files and release.json all check out."""

    directory: Path
    manifest: ReleaseManifest
    digest: str
    signer: str
    hint: str
    key_source: str | None
    files: tuple[oms.FileDigest, ...]
    """What to transfer: every covered file and the signature itself (ignored paths are left out)."""

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def security_version(self) -> int:
        return self.manifest.security_version

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


# --- create, sign, verify ---------------------------------------------------------------------

def _check_out_dir(out_dir: Path) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ConfigError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty; a release is made into a new directory",
                          hint="choose another --out, or remove the old one")


def _session(model: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("making a smoke set needs onnxruntime on this laptop",
                          hint="pip install onnxruntime, or make the release with --no-smoke") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad model
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{model}: onnxruntime cannot load it as an ONNX model ({detail[:300]})") from None


def _input_spec(sess: Any) -> list[dict]:
    from fieldkit.agent.benchsession import ORT_DTYPES

    spec = []
    for i in sess.get_inputs():
        dtype = ORT_DTYPES.get(i.type, i.type)
        shape = [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else None) for d in i.shape]
        spec.append({"name": i.name, "shape": shape, "dtype": dtype})
    return spec


def _feedable() -> set[str]:
    from fieldkit.agent.benchsession import ORT_DTYPES

    return set(ORT_DTYPES.values())


def _random_feeds(np: Any, spec: list[dict], k: int, seed: int) -> dict:
    from fieldkit.agent.benchsession import random_array

    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in spec:
        if inp["dtype"] not in _feedable():
            raise ConfigError(f"input '{inp['name']}' has type {inp['dtype']}; random smoke inputs cannot be "
                              "made for it", hint="give the inputs with --smoke-inputs FILE.npz")
        shape = [d if isinstance(d, int) else 1 for d in inp["shape"]]
        if shape and not isinstance(inp["shape"][0], int):
            shape[0] = k  # K samples along a symbolic batch dimension; other symbolic dims are 1
        feeds[inp["name"]] = random_array(np, rng, shape, inp["dtype"])
    return feeds


def _npz_feeds(np: Any, path: Path, spec: list[dict]) -> dict:
    if not path.is_file():
        raise ConfigError(f"smoke inputs {path} do not exist" if not path.exists() else f"{path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # numpy raises many kinds for a bad file
        raise ConfigError(f"{path} is not a readable .npz file ({type(exc).__name__}: {str(exc)[:200]})",
                          hint="save the inputs with numpy.savez(path, **{input_name: array})") from None
    names = [i["name"] for i in spec]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ConfigError(f"{path} has no array for input(s) {', '.join(map(repr, missing))} "
                          f"(it has: {', '.join(sorted(arrays)) or 'nothing'})")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise ConfigError(f"{path} has arrays the model does not take: {', '.join(map(repr, extra))} "
                          f"(the model's inputs: {', '.join(names)})")
    feeds = {}
    for inp in spec:
        arr = arrays[inp["name"]]
        want = inp["dtype"]
        if arr.dtype.kind in "OUSV":
            raise ConfigError(f"{path}: array '{inp['name']}' is {arr.dtype}; the model expects {want}")
        if arr.dtype.name != want:
            if want not in _feedable() or not np.can_cast(arr.dtype, np.dtype(want), casting="same_kind"):
                raise ConfigError(f"{path}: array '{inp['name']}' is {arr.dtype.name}; the model expects {want}")
            arr = arr.astype(want)
        feeds[inp["name"]] = np.ascontiguousarray(arr)
    return feeds


def _reference_outputs(np: Any, sess: Any, feeds: dict, source: str) -> dict:
    try:
        values = sess.run(None, feeds)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"running the model on {source} failed: {detail[:300]}") from None
    outputs = {}
    for meta, value in zip(sess.get_outputs(), values):
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
            raise ConfigError(f"output '{meta.name}' is not a numeric tensor ({type(value).__name__}); "
                              "a smoke set cannot hold it", hint="make the release with --no-smoke")
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise ConfigError(f"output '{meta.name}' holds NaN or infinity on {source}; a smoke test against it "
                              "could never pass", hint="give other inputs with --smoke-inputs")
        outputs[meta.name] = value
    return outputs


def _write_npz(np: Any, path: Path, arrays: dict) -> None:
    with atomic_open(path, binary=True) as fh:
        np.savez(fh, **arrays)


def _copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, atomic_open(dst, binary=True) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _check_number(value: Any, what: str, *, positive: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ConfigError(f"{what}: expected a {'positive' if positive else 'non-negative'} number, got {value!r}")


def create_release(model_onnx: Path | str, *, name: str, version: str, security_version: int = 0,
                   smoke_inputs: Path | str | None = None, smoke_random: int | None = None, no_smoke: bool = False,
                   key_path: Path | str, out_dir: Path | str, notes: str = "", profiles: Sequence[str] | None = None,
                   atol: float = 1e-4, rtol: float = 1e-3, budget_ms: float | None = None, seed: int = 0,
                   cancel: threading.Event | None = None) -> ReleaseInfo:
    """Make a signed release directory ``out_dir`` from ``model_onnx``.

    The smoke set is ``smoke_inputs`` (an .npz of inputs by input name) or ``smoke_random`` K samples
    (seeded random inputs from the model's input spec: K along a symbolic batch dimension, other symbolic
    dimensions 1); its reference outputs come from onnxruntime (CPU) here. Without a smoke set only with
    ``no_smoke``. ``out_dir`` must not exist or be empty; it appears complete and signed, or not at all."""
    model = Path(model_onnx)
    out_dir = Path(out_dir)
    given = sum([smoke_inputs is not None, smoke_random is not None, bool(no_smoke)])
    if given == 0:
        raise ConfigError("a release needs a smoke set",
                          hint="give --smoke-inputs FILE.npz or --smoke-random K, or --no-smoke to make it without")
    if given > 1:
        raise ConfigError("give only one of --smoke-inputs, --smoke-random and --no-smoke")
    if smoke_random is not None and (isinstance(smoke_random, bool) or not isinstance(smoke_random, int)
                                     or not 1 <= smoke_random <= MAX_SMOKE_RANDOM):
        raise ConfigError(f"--smoke-random: expected a number of samples from 1 to {MAX_SMOKE_RANDOM}, "
                          f"got {smoke_random!r}")
    _check_number(atol, "--atol")
    _check_number(rtol, "--rtol")
    _check_number(budget_ms, "--budget-ms", positive=True)
    if not model.is_file():
        raise ConfigError(f"model {model} does not exist" if not model.exists() else f"model {model} is not a file")
    if model.name in RESERVED:
        raise ConfigError(f"model {model}: the name {model.name} is reserved in a release; rename the file")
    smoke = None if no_smoke else {"inputs": SMOKE_INPUTS, "outputs": SMOKE_OUTPUTS, "atol": atol, "rtol": rtol,
                                    "budget_ms": budget_ms}
    doc: dict[str, Any] = {
        "name": name, "version": version, "security_version": security_version, "model": model.name,
        "profiles": list(profiles or []), "inputs": None, "smoke": smoke, "no_smoke": bool(no_smoke),
        "notes": notes, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_by": f"fieldkit {_version()}",
    }
    source = f"{out_dir.name}/{RELEASE_JSON}"
    validate_manifest(doc, source)  # the command line's values, before any work
    key = signing.load_private_key(Path(key_path), what="release key")
    _check_out_dir(out_dir)

    arrays: dict[str, dict] = {}
    if not no_smoke:
        import numpy as np

        sess = _session(model)
        spec = _input_spec(sess)
        doc["inputs"] = spec
        if smoke_inputs is not None:
            feeds = _npz_feeds(np, Path(smoke_inputs), spec)
            source = str(smoke_inputs)
        else:
            feeds = _random_feeds(np, spec, int(smoke_random or 1), seed)
            source = f"{smoke_random} random sample(s) (seed {seed})"
        arrays = {SMOKE_INPUTS: feeds, SMOKE_OUTPUTS: _reference_outputs(np, sess, feeds, source)}
    else:
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is not None:  # record the input spec when it is at hand
            doc["inputs"] = _input_spec(_session(model))
    if cancel is not None and cancel.is_set():
        from fieldkit.errors import Cancelled

        raise Cancelled("release creation cancelled; nothing was written")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}")
    tmp.mkdir()
    try:
        _copy_file(model, tmp / model.name)
        if arrays:
            import numpy as np

            for rel, group in arrays.items():
                _write_npz(np, tmp / rel, group)
        manifest = validate_manifest(doc, source)
        atomic_write(tmp / RELEASE_JSON, json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        load_manifest(tmp)
        signed = oms.sign_directory(tmp, key, subject_name=out_dir.name, cancel=cancel)
        _check_out_dir(out_dir)
        os.replace(tmp, out_dir)  # over an empty directory too (POSIX)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReleaseInfo(directory=out_dir, manifest=manifest, digest=signed.digest, signer=signed.signer,
                       hint=signed.hint, files=signed.files)


def _version() -> str:
    from fieldkit import __version__

    return __version__


def sign_release(directory: Path | str, key_path: Path | str, *, cancel: threading.Event | None = None) -> ReleaseInfo:
    """Validate ``directory/release.json`` and (re-)sign the directory with the key at ``key_path``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory" if directory.exists() else f"{directory} does not exist")
    manifest = load_manifest(directory)
    key = signing.load_private_key(Path(key_path), what="release key")
    signed = oms.sign_directory(directory, key, subject_name=directory.resolve().name, cancel=cancel)
    return ReleaseInfo(directory=directory, manifest=manifest, digest=signed.digest, signer=signed.signer,
                       hint=signed.hint, files=signed.files)


def verify_release(directory: Path | str, public_keys: Sequence[Any], *, cancel: threading.Event | None = None,
                   progress: oms.Progress | None = None) -> VerifiedRelease:
    """Verify a release: the signature against ``public_keys`` (paths of PEM files or key objects), every
    file, then release.json. VerificationFailed (exit 1) with the device's codes; ``bad_release`` when
    release.json is invalid or a file it names is not covered by the signature."""
    directory = Path(directory)
    verified = oms.verify_directory(directory, public_keys, cancel=cancel, progress=progress)
    try:
        manifest = load_manifest(directory)
    except ConfigError as exc:
        raise oms.VerificationFailed("bad_release", exc.message, path=RELEASE_JSON, hint=exc.hint) from None
    covered = {f.name for f in verified.files}
    needed = [RELEASE_JSON, manifest.model] + ([manifest.smoke.inputs, manifest.smoke.outputs] if manifest.smoke else [])
    for rel in needed:
        if rel not in covered:
            raise oms.VerificationFailed("bad_release", f"{directory / rel} is not covered by the signature "
                                         "(its ignore_paths leave it out)", path=rel)
    sig = verified.signature
    size, digest = oms.hash_file(sig)
    files = verified.files + (oms.FileDigest(sig.name, size, digest),)
    return VerifiedRelease(directory=directory, manifest=manifest, digest=verified.digest, signer=verified.signer,
                           hint=verified.hint, key_source=verified.key_source, files=files)
