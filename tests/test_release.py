"""Signed model releases: OpenSSF Model Signing interop with the real ``model_signing`` 1.1.1 (CLI and
API, both directions), every refusal code, hostile ``model.sig`` files (Hypothesis), release.json
validation, semver precedence, keys, ``release create`` on a real ONNX model, the CLI's exit codes
and the bench script in tiny mode."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import models  # noqa: F401  (session fixture)

from fieldkit import oms, signing
from fieldkit.errors import ConfigError, FieldkitError
from fieldkit.oms import VerificationFailed
from fieldkit.release import (
    ReleaseError,
    compare_versions,
    create_release,
    keygen,
    load_manifest,
    parse_version,
    sign_release,
    verify_release,
)

MS_CLI = str(Path(sys.executable).parent / "model_signing")
ANOMALY = "anomaly-tabular"


def ms(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([MS_CLI, *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("keys")
    a = keygen(d / "rel.pem")
    b = keygen(d / "other.pem")
    return {"key": a.private, "pub": a.public, "fp": a.fingerprint, "hint": a.hint,
            "other_key": b.private, "other_pub": b.public, "other_fp": b.fingerprint}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tree(d: Path) -> Path:
    """Names whose pathlib order differs from string order, dot files, a sub-directory, git paths."""
    (d / "a").mkdir(parents=True)
    (d / "sub" / "deep").mkdir(parents=True)
    (d / ".git").mkdir()
    (d / "model.onnx").write_bytes(os.urandom(3000))
    (d / "a" / "b").write_bytes(b"a/b")
    (d / "a-b").write_bytes(b"a-b")
    (d / "a.txt").write_bytes(b"a.txt")
    (d / ".hidden").write_bytes(b"dot file")
    (d / "sub" / "deep" / "w.bin").write_bytes(b"\x00" * 10)
    (d / "sub" / ".gitignore").write_bytes(b"*.tmp\n")  # only the top-level .gitignore is ignored
    (d / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    (d / ".gitattributes").write_bytes(b"*.onnx binary\n")
    (d / "empty-dir").mkdir()
    (d / "release.json").write_text(json.dumps({"name": "tree", "version": "1.0.0", "model": "model.onnx",
                                                "no_smoke": True}))
    return d


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree-1.0.0")


@pytest.fixture
def signed(tree: Path, keys: dict) -> Path:
    oms.sign_directory(tree, keys["key"])
    return tree


def fails(code: str, fn, *args, **kw) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as info:
        fn(*args, **kw)
    assert info.value.code == code, f"{info.value.code}: {info.value}"
    assert info.value.exit_code == 1
    return info.value


def resign(directory: Path, key_path: Path, mutate) -> None:
    """Change the signed statement and sign it again with a trusted key (an authentic but odd statement)."""
    sig = directory / "model.sig"
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    mutate(statement)
    payload = json.dumps(statement).encode()
    key = signing.load_private_key(key_path)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = signing.sign_bytes(key, oms.pae(oms.PAYLOAD_TYPE, payload))
    sig.write_text(json.dumps(bundle))


# --- interop --------------------------------------------------------------------------------------

def test_fieldkit_signature_verifies_with_the_model_signing_cli(signed: Path, keys: dict) -> None:
    proc = ms("verify", "key", signed, "--signature", signed / "model.sig", "--public_key", keys["pub"])
    assert proc.returncode == 0, proc.stderr
    assert "Verification succeeded" in proc.stdout
    # and model_signing sees a changed byte in what fieldkit signed
    (signed / "a" / "b").write_bytes(b"a/B")
    proc = ms("verify", "key", signed, "--signature", signed / "model.sig", "--public_key", keys["pub"])
    assert proc.returncode == 1 and "Hash mismatch for 'a/b'" in proc.stderr


def test_model_signing_cli_signature_verifies_with_fieldkit(tmp_path: Path, keys: dict) -> None:
    theirs = make_tree(tmp_path / "theirs")
    ours = make_tree(tmp_path / "ours")
    for name in ("model.onnx",):
        (ours / name).write_bytes((theirs / name).read_bytes())
    proc = ms("sign", "key", theirs, "--private_key", keys["key"], "--signature", theirs / "model.sig")
    assert proc.returncode == 0, proc.stderr
    v = oms.verify_directory(theirs, [keys["pub"]])
    mine = oms.sign_directory(ours, keys["key"])
    # the same content gives the same release digest and the same resources, in the same order
    assert v.digest == mine.digest
    bundle = oms.read_signature(theirs / "model.sig")
    assert [r.name for r in bundle.statement.resources] == [f.name for f in mine.files] == [
        ".hidden", "a/b", "a-b", "a.txt", "model.onnx", "release.json", "sub/.gitignore", "sub/deep/w.bin"]
    assert sorted(bundle.statement.ignore_paths) == [".git", ".gitattributes", ".github", ".gitignore", "model.sig"]
    assert v.signer == keys["fp"] and v.hint == keys["hint"] == bundle.hint
    assert v.digest == oms.subject_digest(f.sha256 for f in v.files)
    assert {f.name: f.size for f in v.files}["model.onnx"] == 3000
    # fieldkit refuses what model_signing's own verifier refuses
    (theirs / "sub" / "deep" / "w.bin").write_bytes(b"\x01" * 10)
    err = fails("tampered", oms.verify_directory, theirs, [keys["pub"]])
    assert err.path == "sub/deep/w.bin" and err.actual == sha(theirs / "sub/deep/w.bin")


def test_model_signing_api_agrees_on_extra_and_ignored_files(signed: Path, keys: dict) -> None:
    from model_signing import verifying

    def theirs() -> None:
        verifying.Config().use_elliptic_key_verifier(public_key=keys["pub"]).verify(signed, signed / "model.sig")

    theirs()
    (signed / ".git" / "config").write_text("[core]\n")  # ignored by both
    (signed / ".github").mkdir()
    (signed / ".github" / "x.yml").write_text("on: push\n")
    theirs()
    oms.verify_directory(signed, [keys["pub"]])
    (signed / "a" / ".gitignore").write_text("x\n")  # not at the top: covered, so here an extra file
    with pytest.raises(ValueError, match="Extra files"):
        theirs()
    err = fails("extra_file", oms.verify_directory, signed, [keys["pub"]])
    assert err.path == "a/.gitignore"


# --- refusals -------------------------------------------------------------------------------------

def test_a_changed_byte_names_the_file_and_both_digests(signed: Path, keys: dict) -> None:
    before = sha(signed / "model.onnx")
    data = bytearray((signed / "model.onnx").read_bytes())
    data[1234] ^= 0x01
    (signed / "model.onnx").write_bytes(bytes(data))
    err = fails("tampered", oms.verify_directory, signed, [keys["pub"]])
    assert err.path == "model.onnx" and err.expected == before and err.actual == sha(signed / "model.onnx")
    assert "model.onnx" in str(err) and before in str(err) and err.actual in str(err)


def test_extra_missing_symlink_and_unsigned(signed: Path, keys: dict, tmp_path: Path) -> None:
    pub = [keys["pub"]]
    (signed / "notes.txt").write_text("hi")
    assert "notes.txt" in str(fails("extra_file", oms.verify_directory, signed, pub))
    (signed / "notes.txt").unlink()
    oms.verify_directory(signed, pub)
    (signed / "sub" / "deep" / "w.bin").unlink()
    err = fails("missing_file", oms.verify_directory, signed, pub)
    assert err.path == "sub/deep/w.bin"
    (signed / "sub" / "deep" / "w.bin").symlink_to(signed / "a.txt")
    err = fails("symlink", oms.verify_directory, signed, pub)
    assert err.path == "sub/deep/w.bin"
    with pytest.raises(ConfigError, match="w.bin is a symbolic link"):
        oms.sign_directory(signed, keys["key"])
    (signed / "sub" / "deep" / "w.bin").unlink()
    (signed / ".git" / "link").symlink_to("/etc/passwd")  # refused even in an ignored place, as model_signing does
    fails("symlink", oms.verify_directory, signed, pub)
    (signed / ".git" / "link").unlink()
    (signed / "model.sig").unlink()
    err = fails("not_signed", oms.verify_directory, signed, pub)
    assert "model.sig" in str(err)
    os.mkfifo(signed / "pipe")
    with pytest.raises(ConfigError, match="not a regular file"):
        oms.sign_directory(signed, keys["key"])


def test_keys_wrong_rotated_and_hintless(signed: Path, keys: dict) -> None:
    err = fails("untrusted_key", oms.verify_directory, signed, [keys["other_pub"]])
    assert keys["other_fp"] in str(err)
    v = oms.verify_directory(signed, [keys["other_pub"], keys["pub"]])  # rotation: several trusted keys
    assert v.signer == keys["fp"] and v.key_source == str(keys["pub"])
    bundle = json.loads((signed / "model.sig").read_text())
    del bundle["verificationMaterial"]["publicKey"]["hint"]  # the older format: no hint, every key is tried
    (signed / "model.sig").write_text(json.dumps(bundle))
    assert oms.verify_directory(signed, [keys["other_pub"], keys["pub"]]).signer == keys["fp"]
    fails("bad_signature", oms.verify_directory, signed, [keys["other_pub"]])
    with pytest.raises(ConfigError, match="private key"):
        oms.verify_directory(signed, [keys["key"]])
    with pytest.raises(ConfigError, match="no public key"):
        oms.verify_directory(signed, [])


def test_an_altered_statement_is_a_bad_signature(signed: Path, keys: dict) -> None:
    bundle = json.loads((signed / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (signed / "model.sig").write_text(json.dumps(bundle))
    fails("bad_signature", oms.verify_directory, signed, [keys["pub"]])


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../x", "nul\x00byte", "./a.txt", "a//b", ""])
def test_signed_names_leaving_the_directory_are_bad_paths(signed: Path, keys: dict, name: str) -> None:
    def mutate(s: dict) -> None:
        s["predicate"]["resources"][0]["name"] = name
    resign(signed, keys["key"], mutate)
    fails("bad_path", oms.verify_directory, signed, [keys["pub"]])


def test_inconsistent_duplicated_or_sharded_statements(signed: Path, keys: dict) -> None:
    def subject(s: dict) -> None:
        s["subject"][0]["digest"]["sha256"] = "1" * 64

    def duplicate(s: dict) -> None:
        res = s["predicate"]["resources"]
        res.append(dict(res[0]))
        s["subject"][0]["digest"]["sha256"] = oms.subject_digest(r["digest"] for r in res)

    def shards(s: dict) -> None:
        s["predicate"]["serialization"]["method"] = "shards"

    for mutate, words in ((subject, "subject digest"), (duplicate, "twice"), (shards, "'files' serialization")):
        oms.sign_directory(signed, keys["key"])
        resign(signed, keys["key"], mutate)
        assert words in str(fails("bad_signature", oms.verify_directory, signed, [keys["pub"]]))


def test_signed_ignore_paths_are_honoured(signed: Path, keys: dict) -> None:
    def ignore_docs(s: dict) -> None:
        s["predicate"]["serialization"]["ignore_paths"].append("docs")
    resign(signed, keys["key"], ignore_docs)
    (signed / "docs").mkdir()
    (signed / "docs" / "readme.md").write_text("not shipped")
    v = oms.verify_directory(signed, [keys["pub"]])
    assert "docs" in v.ignore_paths and "docs/readme.md" not in {f.name for f in v.files}


# --- hostile model.sig ---------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70) | st.floats()
                    | st.text(max_size=20), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                                   max_size=3),
                    max_leaves=8)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return value
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory, keys: dict) -> dict:
    d = tmp_path_factory.mktemp("hostile") / "rel"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"model bytes")
    (d / "release.json").write_text("{}")
    oms.sign_directory(d, keys["key"])
    bundle = json.loads((d / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return {"dir": d, "bundle": bundle, "statement": statement, "key": signing.load_private_key(keys["key"]),
            "pub": signing.load_public_key(keys["pub"].read_bytes())}


def _only_fieldkit_errors(fn) -> None:
    try:
        fn()
    except VerificationFailed as exc:
        assert exc.code in oms.CODES and str(exc)
    except FieldkitError as exc:
        assert str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_bundle_fields(hostile_dir: dict, data: st.DataObject) -> None:
    """Any field of model.sig replaced by any JSON value: a fieldkit error or a valid verification."""
    bundle = json.loads(json.dumps(hostile_dir["bundle"]))
    path = data.draw(st.sampled_from(list(_paths(bundle))))
    bundle = _set(bundle, path, data.draw(JSON))
    raw = json.dumps(bundle).encode()
    _only_fieldkit_errors(lambda: oms.parse_signature(raw))
    d = hostile_dir["dir"]
    (d / "model.sig").write_bytes(raw)
    _only_fieldkit_errors(lambda: oms.verify_directory(d, [hostile_dir["pub"]]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_signed_statements(hostile_dir: dict, data: st.DataObject) -> None:
    """An authentic signature over a malformed statement (a signer's bug): only fieldkit errors."""
    statement = json.loads(json.dumps(hostile_dir["statement"]))
    path = data.draw(st.sampled_from(list(_paths(statement))))
    statement = _set(statement, path, data.draw(JSON))
    payload = json.dumps(statement).encode()
    bundle = json.loads(json.dumps(hostile_dir["bundle"]))
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = signing.sign_bytes(hostile_dir["key"],
                                                                        oms.pae(oms.PAYLOAD_TYPE, payload))
    d = hostile_dir["dir"]
    (d / "model.sig").write_text(json.dumps(bundle))
    _only_fieldkit_errors(lambda: oms.verify_directory(d, [hostile_dir["pub"]]))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzz_raw_bytes(raw: bytes) -> None:
    _only_fieldkit_errors(lambda: oms.parse_signature(raw, "usb/model.sig"))


def test_hostile_sizes_and_encodings_name_the_file_and_field(hostile_dir: dict) -> None:
    good = hostile_dir["bundle"]
    cases = {
        b"[" * 100_000: "not a JSON",
        b"\xff\xfe": "not a JSON",
        json.dumps(dict(good, mediaType=5)).encode(): "mediaType: expected a string, got 5",
        json.dumps({**good, "dsseEnvelope": {**good["dsseEnvelope"], "payload": "%%%"}}).encode():
            "dsseEnvelope.payload: expected base64 text",
        json.dumps({**good, "dsseEnvelope": {**good["dsseEnvelope"], "signatures": []}}).encode():
            "dsseEnvelope.signatures: empty",
        json.dumps({**good, "verificationMaterial": {"certificate": {}}}).encode(): "key-mode signatures",
        b'{"mediaType": ' + b"9" * 5000 + b"}": "not a JSON",
    }
    for raw, words in cases.items():
        with pytest.raises(VerificationFailed) as info:
            oms.parse_signature(raw, "stick/model.sig")
        assert info.value.code == "bad_signature"
        assert str(info.value).startswith("stick/model.sig: ") and words in str(info.value), str(info.value)


# --- release.json ----------------------------------------------------------------------------------

def _manifest_dir(tmp_path: Path, **doc) -> Path:
    d = tmp_path / "defects-2.1.0"
    d.mkdir(exist_ok=True)
    (d / "model.onnx").write_bytes(b"m")
    base = {"name": "defects", "version": "2.1.0", "security_version": 3, "model": "model.onnx", "no_smoke": True}
    base.update(doc)
    (d / "release.json").write_text(json.dumps({k: v for k, v in base.items() if v is not ...}))
    return d


@pytest.mark.parametrize("change, words", [
    ({"version": "2.1"}, "defects-2.1.0/release.json: version: expected semver MAJOR.MINOR.PATCH, got '2.1'"),
    ({"version": 2}, "version: expected semver MAJOR.MINOR.PATCH, got 2"),
    ({"security_version": -1}, "security_version: expected an integer >= 0, got -1"),
    ({"security_version": "3"}, "security_version: expected an integer >= 0, got '3'"),
    ({"security_version": True}, "security_version: expected an integer >= 0, got True"),
    ({"security_version": 10 ** 30}, "security_version: expected an integer >= 0, got a huge number"),
    ({"name": "../etc"}, "name: expected 1-64 letters"),
    ({"name": ...}, "name: missing"),
    ({"model": "../model.onnx"}, "model: expected a relative file name"),
    ({"model": "/abs/model.onnx"}, "model: expected a relative file name"),
    ({"model": "other.onnx"}, "model: 'other.onnx' is not a file"),
    ({"no_smoke": ...}, "smoke: missing; expected a smoke object, or \"no_smoke\": true"),
    ({"no_smoke": False, "smoke": None}, "smoke: missing"),
    ({"no_smoke": False, "smoke": {"atol": "x"}}, "smoke.atol: expected a number, got 'x'"),
    ({"no_smoke": False, "smoke": 5}, "smoke: expected an object, got 5"),
    ({"no_smoke": False, "smoke": {}}, "smoke.inputs: 'smoke/inputs.npz' is not a file"),
    ({"profiles": "pi"}, "profiles: expected a list of profile names"),
])
def test_release_json_errors_name_the_file_and_key(tmp_path: Path, change: dict, words: str) -> None:
    d = _manifest_dir(tmp_path, **change)
    with pytest.raises(ReleaseError) as info:
        load_manifest(d)
    assert words in str(info.value), str(info.value)
    assert "release.json" in str(info.value) and info.value.exit_code == 2


def test_release_json_reading_accepts_model_file_and_rejects_garbage(tmp_path: Path) -> None:
    d = _manifest_dir(tmp_path, model=..., model_file="model.onnx")
    m = load_manifest(d)
    assert m.model == "model.onnx" and m.security_version == 3 and m.smoke is None and m.no_smoke
    (d / "release.json").write_text("{not json")
    with pytest.raises(ReleaseError, match=r"release.json: not valid JSON \(line 1"):
        load_manifest(d)
    (d / "release.json").write_text("[1]")
    with pytest.raises(ReleaseError, match="expected a JSON object"):
        load_manifest(d)
    (d / "release.json").unlink()
    with pytest.raises(ReleaseError, match="has no release.json"):
        load_manifest(d)


# --- semver -------------------------------------------------------------------------------------------

def test_semver_precedence_follows_the_spec() -> None:
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
             "1.0.0-rc.1", "1.0.0", "1.0.1", "1.9.0", "1.10.0", "2.0.0-0", "2.0.0"]
    for lo, hi in zip(chain, chain[1:]):
        assert compare_versions(lo, hi) == -1 and compare_versions(hi, lo) == 1, (lo, hi)
    assert sorted(reversed(chain), key=parse_version) == chain
    assert compare_versions("1.0.0+build.1", "1.0.0+build.2") == 0
    assert str(parse_version("1.2.3-rc.1+sha.5114f85")) == "1.2.3-rc.1+sha.5114f85"
    for bad in ("1.0", "01.0.0", "1.0.0-01", "v1.0.0", "1.0.0-", "1.0.0+", "1.0.0-a..b", " 1.0.0", "1.0.0\n", "١.0.0"):
        with pytest.raises(ValueError, match="expected semver MAJOR.MINOR.PATCH"):
            parse_version(bad)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
                          st.lists(st.one_of(st.integers(0, 12).map(str), st.sampled_from(["a", "b", "rc", "x-1"])),
                                   max_size=3)), min_size=2, max_size=6))
def test_semver_comparison_is_a_total_order(versions: list) -> None:
    texts = [f"{a}.{b}.{c}" + ("-" + ".".join(pre) if pre else "") for a, b, c, pre in versions]
    for x in texts:
        for y in texts:
            assert compare_versions(x, y) == -compare_versions(y, x)
            for z in texts:
                if compare_versions(x, y) <= 0 and compare_versions(y, z) <= 0:
                    assert compare_versions(x, z) <= 0


# --- keys ------------------------------------------------------------------------------------------

def test_keygen_modes_and_no_overwrite(tmp_path: Path) -> None:
    pair = keygen(tmp_path / "keys" / "rel.pem")
    assert pair.public == tmp_path / "keys" / "rel.pub.pem"
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public.stat().st_mode) == 0o644
    assert signing.key_fingerprint(signing.load_public_key(pair.public.read_bytes())) == pair.fingerprint
    before = pair.private.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        keygen(pair.private)
    assert pair.private.read_bytes() == before
    again = keygen(pair.private, force=True)
    assert again.fingerprint != pair.fingerprint and stat.S_IMODE(again.private.stat().st_mode) == 0o600
    assert keygen(tmp_path / "plain").public == tmp_path / "plain.pub.pem"


# --- create, sign, verify a release ------------------------------------------------------------

def test_create_with_random_smoke_on_a_real_model(tmp_path: Path, keys: dict, models) -> None:  # noqa: F811
    import numpy as np
    import onnxruntime as ort

    out = tmp_path / "anomaly-1.2.0"
    info = create_release(models[ANOMALY], name="anomaly", version="1.2.0", security_version=2, smoke_random=5,
                          key_path=keys["key"], out_dir=out, profiles=["line-pc"], budget_ms=50, notes="first")
    m = load_manifest(out)
    assert (m.name, m.version, m.security_version, m.model) == ("anomaly", "1.2.0", 2, "anomaly-tabular.onnx")
    assert m.inputs[0].name == "features" and m.inputs[0].shape == ["N", 32] and m.inputs[0].dtype == "float32"
    assert m.smoke.budget_ms == 50 and m.profiles == ["line-pc"] and not m.no_smoke
    inputs = np.load(out / "smoke/inputs.npz")
    outputs = np.load(out / "smoke/outputs.npz")
    assert inputs["features"].shape == (5, 32) and inputs["features"].dtype == np.float32
    sess = ort.InferenceSession(str(out / m.model), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"features": inputs["features"]})[0], outputs["score"])
    assert (out / m.model).read_bytes() == models[ANOMALY].read_bytes()
    v = verify_release(out, [keys["pub"]])
    assert v.digest == info.digest and v.signer == keys["fp"] and v.security_version == 2
    assert [f.name for f in v.files] == ["anomaly-tabular.onnx", "release.json", "smoke/inputs.npz",
                                         "smoke/outputs.npz", "model.sig"]
    assert v.total_bytes == sum((out / f.name).stat().st_size for f in v.files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    proc = ms("verify", "key", out, "--signature", out / "model.sig", "--public_key", keys["pub"])
    assert proc.returncode == 0, proc.stderr
    # the same seed makes the same smoke set
    again = create_release(models[ANOMALY], name="anomaly", version="1.2.0", smoke_random=5, key_path=keys["key"],
                           out_dir=tmp_path / "again")
    assert (tmp_path / "again/smoke/inputs.npz").read_bytes() == (out / "smoke/inputs.npz").read_bytes() \
        or np.array_equal(np.load(tmp_path / "again/smoke/inputs.npz")["features"], inputs["features"])
    assert again.manifest.security_version == 0


def test_create_with_given_inputs_and_its_refusals(tmp_path: Path, keys: dict, models) -> None:  # noqa: F811
    import numpy as np

    npz = tmp_path / "golden.npz"
    golden = np.linspace(0, 1, 3 * 32).reshape(3, 32)  # float64: cast to the model's float32
    np.savez(npz, features=golden)
    out = tmp_path / "rel"
    out.mkdir()  # an empty directory is fine
    create_release(models[ANOMALY], name="anomaly", version="2.0.0-rc.1", smoke_inputs=npz, key_path=keys["key"],
                   out_dir=out, atol=1e-3, rtol=0)
    got = np.load(out / "smoke/inputs.npz")["features"]
    assert got.dtype == np.float32 and np.array_equal(got, golden.astype(np.float32))
    assert load_manifest(out).smoke.atol == 1e-3
    kw = dict(name="anomaly", version="2.0.0", key_path=keys["key"])
    with pytest.raises(ConfigError, match="not empty"):
        create_release(models[ANOMALY], smoke_random=1, out_dir=out, **kw)
    with pytest.raises(ConfigError, match="needs a smoke set"):
        create_release(models[ANOMALY], out_dir=tmp_path / "n1", **kw)
    bad_model = tmp_path / "broken.onnx"
    bad_model.write_bytes(b"not onnx at all")
    with pytest.raises(ConfigError, match=r"broken.onnx: onnxruntime cannot load it"):
        create_release(bad_model, smoke_random=1, out_dir=tmp_path / "n2", **kw)
    np.savez(tmp_path / "wrong.npz", feature=golden)
    with pytest.raises(ConfigError, match=r"wrong.npz has no array for input\(s\) 'features' \(it has: feature\)"):
        create_release(models[ANOMALY], smoke_inputs=tmp_path / "wrong.npz", out_dir=tmp_path / "n3", **kw)
    with pytest.raises(ConfigError, match=r"^n4/release.json: version: expected semver MAJOR.MINOR.PATCH, got '2.0'$"):
        create_release(models[ANOMALY], smoke_random=1, out_dir=tmp_path / "n4", **dict(kw, version="2.0"))
    assert not any((tmp_path / n).exists() for n in ("n1", "n2", "n3", "n4"))
    # no smoke set
    info = create_release(models[ANOMALY], no_smoke=True, out_dir=tmp_path / "nosmoke", **kw)
    doc = json.loads((tmp_path / "nosmoke" / "release.json").read_text())
    assert doc["smoke"] is None and doc["no_smoke"] is True and not (tmp_path / "nosmoke" / "smoke").exists()
    assert verify_release(tmp_path / "nosmoke", [keys["pub"]]).digest == info.digest


def test_sign_release_validates_and_verify_release_flags_bad_release(tree: Path, keys: dict) -> None:
    sign_release(tree, keys["key"])
    v = verify_release(tree, [keys["pub"]])
    names = [f.name for f in v.files]
    assert "model.sig" in names and not any(n.startswith(".git") and n != ".gitattributes" for n in names)
    assert ".gitattributes" not in names  # ignored: not transferred
    doc = json.loads((tree / "release.json").read_text())
    doc["version"] = "1.0"
    (tree / "release.json").write_text(json.dumps(doc))
    with pytest.raises(ReleaseError, match="version: expected semver"):
        sign_release(tree, keys["key"])
    oms.sign_directory(tree, keys["key"])  # signed anyway, behind fieldkit's back
    err = fails("bad_release", verify_release, tree, [keys["pub"]])
    assert "release.json: version" in str(err)


# --- CLI ---------------------------------------------------------------------------------------------

def test_cli_keygen_create_sign_verify_and_exit_codes(tmp_path: Path, models) -> None:  # noqa: F811
    key, pub, out = tmp_path / "k.pem", tmp_path / "k.pub.pem", tmp_path / "anomaly-3.0.0"
    p = run_cli("release", "keygen", "--out", str(key), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["public"] == str(pub)
    assert run_cli("release", "keygen", "--out", str(key)).returncode == 2
    p = run_cli("release", "create", str(models[ANOMALY]), "--name", "anomaly", "--version", "3.0.0",
                "--security-version", "4", "--smoke-random", "2", "--profile", "line-pc", "--key", str(key),
                "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    made = json.loads(p.stdout)
    p = run_cli("release", "verify", str(out), "--key", str(pub), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["valid"] is True and doc["error"] is None and doc["digest"] == made["digest"]
    assert (doc["name"], doc["version"], doc["security_version"]) == ("anomaly", "3.0.0", 4)
    assert doc["signer"].startswith("SHA256:") and len(doc["hint"]) == 64
    assert {f["name"] for f in doc["files"]} >= {"model.sig", "release.json", "smoke/outputs.npz"}
    (out / "smoke" / "extra.npz").write_bytes(b"x")
    p = run_cli("release", "verify", str(out), "--key", str(pub), "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["valid"] is False and doc["error"]["code"] == "extra_file" and "smoke/extra.npz" in doc["error"]["message"]
    p = run_cli("release", "verify", str(out), "--key", str(pub))
    assert p.returncode == 1 and "not a valid release (extra_file)" in p.stderr
    (out / "smoke" / "extra.npz").unlink()
    p = run_cli("release", "sign", str(out), "--key", str(key))
    assert p.returncode == 0 and "signed" in p.stdout, p.stderr
    assert run_cli("release", "verify", str(out), "--key", str(tmp_path / "nope.pem")).returncode == 2
    p = run_cli("release", "create", str(models[ANOMALY]), "--name", "x", "--version", "1.0.0", "--key", str(key),
                "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "--smoke-inputs" in p.stderr  # one of the smoke options is required


def test_the_release_modules_import_light() -> None:
    code = ("import sys, fieldkit.oms, fieldkit.release, fieldkit.cli.release\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'onnxruntime', 'cryptography', "
            "'model_signing', 'textual', 'rich'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
