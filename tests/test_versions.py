"""The signed site manifest and `fieldkit versions`: real signed releases installed by the real agent on
`local:` devices and simulated SSH / serial devices, the real CLI, the real journal; inventory groups.

What a technician checks is what these tests assert: which status each model gets, the exit code,
that a manifest changed on a USB stick (or signed by another key) is refused, what the journal says.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from conftest import run_cli
from models import models  # noqa: F401  (session fixture)

from fieldkit.devices import open_session
from fieldkit.errors import ConfigError
from fieldkit.install import install_release
from fieldkit.inventory import add_device, devices_in_group, load_inventory
from fieldkit.journal import Journal
from fieldkit.locations import Home
from fieldkit.manifest import ManifestError, create_manifest, expected_for, verify_manifest
from fieldkit.modelstore import add_anchor, read_public_key
from fieldkit.release import create_release, keygen

ANOMALY = "anomaly-tabular"
MODELS_DIR = "var/lib/fieldkit/models"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "rel.pem")


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "other.pem")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, key, models) -> dict:
    """anomaly 1.0.0 and 2.0.0, and a second model ("spare") nobody expects."""
    base = tmp_path_factory.mktemp("releases")
    out = {}
    for label, name, version in (("v1", "anomaly", "1.0.0"), ("v2", "anomaly", "2.0.0"), ("spare", "spare", "1.0.0")):
        out[label] = create_release(models[ANOMALY], name=name, version=version, security_version=1, smoke_random=2,
                                    key_path=key.private, out_dir=base / f"{name}-{version}")
    return out


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cli(*args: str, timeout: float = 180) -> tuple[int, dict | None, str, str]:
    proc = run_cli(*args, timeout=timeout)
    doc = json.loads(proc.stdout) if "--json" in args and proc.stdout.strip() else None
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, doc, proc.stdout, proc.stderr


def install(home: Home, device: str, key, *releases) -> None:
    """Trust the release key and install each release, through the same session calls the CLI makes."""
    pem, fp = read_public_key(key.public)
    with open_session(device, home) as session:
        add_anchor(session, pem, fp)
        for rel in releases:
            res = install_release(session, rel.directory)
            assert res.result == "committed", res.message


def flip_a_byte(root: Path, model: str, version: str) -> Path:
    target = next((root / MODELS_DIR / model / version).glob("*.onnx"))
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[100] ^= 0x40
    target.write_bytes(bytes(data))
    return target


# ---- the manifest file ---------------------------------------------------------------------------
SITE = """
[[expect]]
group = "line3"
model = "anomaly"
version = "1.0.0"

[[expect]]
device = "press-pinned"
model = "anomaly"
version = "1.0.0"
digest = "sha256:{digest}"
min_agent = "0.1.0"

[[expect]]
profile = "raspberry-pi-5"
model = "anomaly"
version = "9.9.9"
"""


@pytest.mark.parametrize(("source", "expected"), [
    ('[[expect]]\ndevice = "a"\nmodel = "m"\nversion = "1.0"\n',
     '[[expect]] #1 (device = "a"): version: expected semver MAJOR.MINOR.PATCH, got \'1.0\''),
    ('[[expect]]\ndevice = "a"\nmodel = "m"\nversion = "1.0.0"\n\n[[expect]]\ngroup = "g"\nmodel = "m"\n'
     'version = "1.0.0"\nverison = "2"\n', '[[expect]] #2 (group = "g"): verison: unknown key'),
    ('[[expect]]\ndevice = "a"\ngroup = "g"\nmodel = "m"\nversion = "1.0.0"\n',
     '[[expect]] #1 (device = "a"): expected exactly one of device, group or profile, got device and group'),
    ('[[expect]]\nmodel = "m"\nversion = "1.0.0"\n', "[[expect]] #1: expected exactly one of device, group or profile"),
    ('[[expect]]\nprofile = "p"\nmodel = 7\nversion = "1.0.0"\n',
     '[[expect]] #1 (profile = "p"): model: expected a string in quotes, got 7'),
    ('[[expect]]\nprofile = "p"\nmodel = "m"\n', '[[expect]] #1 (profile = "p"): version: missing'),
    ('[[expect]]\nprofile = "p"\nmodel = "m"\nversion = "1.0.0"\ndigest = "sha256:abc"\n',
     '[[expect]] #1 (profile = "p"): digest: expected a sha256 digest'),
    ('[[expect]]\nprofile = "p"\nmodel = "m"\nversion = "1.0.0"\nmin_agent = "new"\n',
     '[[expect]] #1 (profile = "p"): min_agent: expected semver'),
    ('[[expect]]\ndevice = "a"\nmodel = "m"\nversion = "1.0.0"\n[[expect]]\ndevice = "a"\nmodel = "m"\n'
     'version = "2.0.0"\n', '[[expect]] #2 (device = "a"): model: m is already expected for device = "a" by '
     '[[expect]] #1'),
    ('site = "x"\n', "unknown key 'site' at the top level"),
    ("[[expect\n", "line 1"),
])
def test_manifest_source_errors_name_the_file_entry_and_key(tmp_path: Path, key, source: str, expected: str) -> None:
    src = write(tmp_path / "site.toml", source)
    out = tmp_path / "site.manifest.json"
    with pytest.raises(ConfigError) as info:
        create_manifest(src, key.private, out)
    assert str(src) in info.value.message and expected in info.value.message, info.value.message
    assert not out.exists()
    rc, _, _, err = cli("manifest", "create", str(src), "--key", str(key.private), "--out", str(out))
    assert rc == 2 and expected in err, err


def test_create_verify_and_what_the_signature_covers(tmp_path: Path, key, other_key) -> None:
    src = write(tmp_path / "site.toml", SITE.format(digest="AB" * 32))
    out = tmp_path / "site.manifest.json"
    rc, doc, _, err = cli("manifest", "create", str(src), "--key", str(key.private), "--out", str(out), "--json")
    assert rc == 0 and doc["manifest"]["signer"] == key.fingerprint, err
    env = json.loads(out.read_text())
    assert env["payloadType"] == "application/vnd.fieldkit.site-manifest+json"
    assert env["signatures"][0]["keyid"] == key.fingerprint
    payload = json.loads(base64.b64decode(env["payload"]))
    assert payload["format"] == "fieldkit-site-manifest/1" and len(payload["entries"]) == 3
    assert payload["entries"][1]["digest"] == "ab" * 32  # normalised: lowercase hex, no prefix

    m = verify_manifest(out, [key.public])
    assert (m.signer, len(m.entries), m.entries[0].group) == (key.fingerprint, 3, "line3")
    rc, doc, _, err = cli("manifest", "verify", str(out), "--key", str(key.public), "--json")
    assert rc == 0 and doc["ok"] and doc["manifest"]["entries"] == 3, err
    # a rotated set of keys: the right one among others is enough
    rc, _, out_text, err = cli("manifest", "verify", str(out), "--key", str(other_key.public), "--key", str(key.public))
    assert rc == 0 and key.fingerprint in out_text, err

    # an unknown key is refused (exit 1), naming who signed it
    rc, _, _, err = cli("manifest", "verify", str(out), "--key", str(other_key.public))
    assert rc == 1 and key.fingerprint in err and "not the key given" in err, err
    with pytest.raises(ManifestError):
        verify_manifest(out, [other_key.public])

    # a USB stick changes what "expected" means: one version in the payload, the signature kept
    tampered = tmp_path / "tampered.json"
    env2 = dict(env, payload=base64.b64encode(base64.b64decode(env["payload"]).replace(b'"1.0.0"', b'"1.0.1"',
                                                                                           1)).decode())
    tampered.write_text(json.dumps(env2))
    rc, _, _, err = cli("manifest", "verify", str(tampered), "--key", str(key.public))
    assert rc == 1 and "does not verify" in err and "altered" in err, err
    # the signer's keyid replaced by the other key's: still refused
    env3 = dict(env2, signatures=[{"keyid": other_key.fingerprint, "sig": env["signatures"][0]["sig"]}])
    tampered.write_text(json.dumps(env3))
    rc, _, _, err = cli("manifest", "verify", str(tampered), "--key", str(other_key.public), "--key",
                        str(key.public))
    assert rc == 1 and "does not verify" in err, err


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b"[" * 100_000, "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"payloadType": 7}', "payloadType: expected a string, got 7"),
    (b'{"payloadType": "application/vnd.in-toto+json"}', "not a site manifest"),
    (b'{"payloadType": "application/vnd.fieldkit.site-manifest+json", "payload": "!!", "signatures": []}',
     "payload: expected base64 text"),
    (b'{"payloadType": "application/vnd.fieldkit.site-manifest+json", "payload": "e30=", "signatures": 3}',
     "signatures: expected a list of signatures, got 3"),
    (b'{"payloadType": "application/vnd.fieldkit.site-manifest+json", "payload": "e30=", "signatures": []}',
     "not signed"),
    (b'{"payloadType": "application/vnd.fieldkit.site-manifest+json", "payload": "e30=", "signatures": [5]}',
     "signatures[0]: expected an object, got 5"),
    (b'{"payloadType": "application/vnd.fieldkit.site-manifest+json", "payload": "e30=", '
     b'"signatures": [{"sig": "%%%"}]}', "does not verify"),
    (b'{"payloadType": "application/vnd.fieldkit.site-manifest+json", "payload": "e30=", '
     b'"signatures": [{"sig": null}]}', "sig: expected base64 text, got None"),
])
def test_a_hostile_manifest_file_is_a_clear_error(tmp_path: Path, key, content: bytes, expected: str) -> None:
    path = tmp_path / "site.manifest.json"
    path.write_bytes(content)
    with pytest.raises(ManifestError) as info:
        verify_manifest(path, [key.public])
    assert expected in info.value.message and str(path) in info.value.message, info.value.message
    rc, _, _, err = cli("manifest", "verify", str(path), "--key", str(key.public))
    assert rc == 1 and expected in err, err


def test_a_huge_or_missing_manifest_file(tmp_path: Path, key) -> None:
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as fh:
        fh.truncate(64 << 20)
    with pytest.raises(ManifestError) as info:
        verify_manifest(huge, [key.public])
    assert "at most" in info.value.message
    rc, _, _, err = cli("manifest", "verify", str(tmp_path / "nope.json"), "--key", str(key.public))
    assert rc == 2 and "no such file" in err, err
    rc, _, _, err = cli("manifest", "verify", str(huge), "--key", str(key.private))  # the private key by mistake
    assert rc == 2 and "public key" in err, err


def test_a_signed_payload_with_a_bad_entry_is_refused(tmp_path: Path, key) -> None:
    """A signer's mistake (or an old tool) cannot smuggle a malformed entry past the checks."""
    from fieldkit import signing
    from fieldkit.manifest import PAYLOAD_TYPE
    from fieldkit.oms import pae

    priv = signing.load_private_key(key.private)
    payload = signing.canonical({"format": "fieldkit-site-manifest/1", "created": "now",
                                 "entries": [{"device": "a", "model": "m", "version": 3}]})
    env = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
           "signatures": [{"keyid": key.fingerprint, "sig": signing.sign_bytes(priv, pae(PAYLOAD_TYPE, payload))}]}
    path = write(tmp_path / "m.json", json.dumps(env))
    with pytest.raises(ManifestError) as info:
        verify_manifest(path, [key.public])
    assert '[[expect]] #1 (device = "a"): version: expected a string' in info.value.message


def test_the_most_specific_entry_wins(tmp_path: Path, key) -> None:
    src = write(tmp_path / "site.toml", """
[[expect]]
profile = "raspberry-pi-5"
model = "defects"
version = "1.0.0"
[[expect]]
group = "line3"
model = "defects"
version = "2.0.0"
[[expect]]
device = "cam-7"
model = "defects"
version = "3.0.0"
[[expect]]
profile = "raspberry-pi-5"
model = "counter"
version = "0.1.0"
[[expect]]
group = "line4"
model = "defects"
version = "4.0.0"
""")
    create_manifest(src, key.private, tmp_path / "m.json")
    m = verify_manifest(tmp_path / "m.json", [key.public])

    def got(name: str, groups: list[str], profile: str) -> dict:
        return {e.model: (e.version, e.kind) for e in expected_for(m, name, groups, profile)}

    assert got("cam-7", ["line3"], "raspberry-pi-5") == {"defects": ("3.0.0", "device"), "counter": ("0.1.0", "profile")}
    assert got("cam-8", ["line3"], "raspberry-pi-5") == {"defects": ("2.0.0", "group"), "counter": ("0.1.0", "profile")}
    assert got("cam-9", [], "raspberry-pi-5") == {"defects": ("1.0.0", "profile"), "counter": ("0.1.0", "profile")}
    assert got("cam-9", [], "generic-linux") == {}
    assert got("cam-9", ["line4", "line3"], "generic-linux") == {"defects": ("2.0.0", "group")}  # first in the file
    assert [e.model for e in expected_for(m, "cam-7", ["line3"], "raspberry-pi-5")] == ["counter", "defects"]


# ---- fieldkit versions against real devices --------------------------------------------------------
def _site(tmp_path: Path, key, digest: str) -> Path:
    src = write(tmp_path / "site.toml", f"""
[[expect]]
group = "line3"
model = "anomaly"
version = "1.0.0"

[[expect]]
device = "pinned"
model = "anomaly"
version = "1.0.0"
digest = "sha256:{digest}"
min_agent = "0.1.0"

[[expect]]
device = "wrong-digest"
model = "anomaly"
version = "1.0.0"
digest = "{'0' * 64}"

[[expect]]
device = "old-agent"
model = "anomaly"
version = "1.0.0"
min_agent = "99.0.0"
""")
    out = tmp_path / "site.manifest.json"
    create_manifest(src, key.private, out)
    return out


def test_versions_finds_each_status(home: Home, tmp_path: Path, key, other_key, releases) -> None:
    roots = {}
    plan = {  # device: (groups, releases installed in order)
        "ok": (["line3"], ["v1"]),
        "drift": (["line3"], ["v1", "v2"]),
        "missing": (["line3"], []),
        "unexpected": ([], ["v1"]),
        "modified": (["line3"], ["v1"]),
        "extra": (["line3"], ["v1", "spare"]),
        "pinned": ([], ["v1"]),
        "wrong-digest": ([], ["v1"]),
        "old-agent": ([], ["v1"]),
    }
    for name, (groups, rels) in plan.items():
        roots[name] = Path(tmp_path / "devices" / name)
        from fieldkit.sim import make_device_root
        make_device_root(roots[name])
        add_device(home, name, f"local:{roots[name]}", groups=groups)
        if rels:
            install(home, name, key, *[releases[r] for r in rels])
    add_device(home, "gone", "ssh://fieldkit@127.0.0.1:1", groups=["line3"])  # nothing listens on port 1
    flip_a_byte(roots["modified"], "anomaly", "1.0.0")
    manifest = _site(tmp_path, key, releases["v1"].digest)
    base = ("versions", "--manifest", str(manifest), "--key", str(key.public), "--timeout", "5")

    rc, doc, out, err = cli(*base, "--all", "--json")
    assert rc == 1, (out, err)
    assert set(doc) == {"manifest", "devices"} and doc["manifest"]["signer"] == key.fingerprint
    by = {d["device"]: d for d in doc["devices"]}
    assert list(by) == [*plan, "gone"]  # the inventory's order
    status = {n: d["status"] for n, d in by.items()}
    assert status == {"ok": "ok", "drift": "drift", "missing": "missing", "unexpected": "unexpected",
                      "modified": "modified", "extra": "unexpected", "pinned": "ok", "wrong-digest": "drift",
                      "old-agent": "drift", "gone": "unreachable"}, status
    for d in doc["devices"]:
        assert {"device", "status", "models"} <= set(d)
        for m in d["models"]:
            assert {"name", "expected", "active", "status"} <= set(m)
    models = {n: {m["name"]: (m["expected"], m["active"], m["status"]) for m in d["models"]} for n, d in by.items()}
    assert models["ok"] == {"anomaly": ("1.0.0", "1.0.0", "ok")}
    assert models["drift"] == {"anomaly": ("1.0.0", "2.0.0", "drift")}
    assert models["missing"] == {"anomaly": ("1.0.0", None, "missing")}
    assert models["unexpected"] == {"anomaly": (None, "1.0.0", "unexpected")}
    assert models["modified"] == {"anomaly": ("1.0.0", "1.0.0", "modified")}
    assert models["extra"] == {"anomaly": ("1.0.0", "1.0.0", "ok"), "spare": (None, "1.0.0", "unexpected")}
    assert models["gone"] == {"anomaly": ("1.0.0", None, "unreachable")}
    pinned = by["pinned"]["models"][0]
    assert pinned["expected_digest"] == pinned["active_digest"] == releases["v1"].digest
    assert "another release" in by["wrong-digest"]["models"][0]["message"]
    assert "older than min_agent 99.0.0" in by["old-agent"]["models"][0]["message"]
    assert "model.onnx" in by["modified"]["models"][0]["message"] or "tampered" in by["modified"]["models"][0]["message"]
    assert by["gone"]["error"] and "gone" in err

    # exit codes: 0 all ok, 3 only unreachable, 1 anything else
    assert cli(*base, "ok", "pinned", "--json")[0] == 0
    rc, doc, out, err = cli(*base, "ok", "gone", "--json")
    assert rc == 3 and [d["status"] for d in doc["devices"]] == ["ok", "unreachable"], (out, err)
    assert cli(*base, "ok", "drift", "gone", "--json")[0] == 1

    # --group selects the inventory's group; the human table names each status
    rc, doc, out, err = cli(*base, "--group", "line3", "--json")
    assert [d["device"] for d in doc["devices"]] == ["ok", "drift", "missing", "modified", "extra", "gone"]
    rc, _, out, err = cli(*base, "--group", "line3")
    assert rc == 1 and "MODEL STATUS" in out and "drift" in out and "modified" in out and "unreachable" in out, out
    rc, _, out, err = cli(*base, "--group", "line9")
    assert rc == 2 and 'no device is in group "line9"' in err and "line3" in err, err

    # the manifest is checked first: another key, or a changed byte, and no device is touched
    with Journal.open_readonly(home) as j:
        before = len(j.entries(action="versions.check"))
    rc, _, _, err = cli("versions", "--all", "--manifest", str(manifest), "--key", str(other_key.public))
    assert rc == 1 and "not the key given" in err, err
    raw = json.loads(manifest.read_text())
    raw["payload"] = base64.b64encode(base64.b64decode(raw["payload"]).replace(b"1.0.0", b"2.0.0")).decode()
    manifest.write_text(json.dumps(raw))
    rc, _, _, err = cli("versions", "--all", "--manifest", str(manifest), "--key", str(key.public))
    assert rc == 1 and "does not verify" in err, err

    # every device checked has its journal entry, the unreachable one too
    with Journal.open_readonly(home) as j:
        entries = j.entries(action="versions.check")
    assert len(entries) == before
    first = {e.device: e for e in entries[:len(plan) + 1]}
    assert set(first) == {*plan, "gone"}
    assert first["ok"].outcome == "ok" and first["ok"].details["status"] == "ok"
    assert first["drift"].outcome == "failed" and first["drift"].details["models"][0]["active"] == "2.0.0"
    assert first["gone"].details["status"] == "unreachable" and first["gone"].details["error"]
    assert all(e.details["manifest"] == first["ok"].details["manifest"] for e in entries)


def test_versions_on_simulated_ssh_and_serial_devices(home: Home, tmp_path: Path, key, releases) -> None:
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=1, serial=1) as sim:
        ssh, serial = (d.name for d in sim.devices)
        install(home, ssh, key, releases["v1"])
        install(home, serial, key, releases["v2"])
        src = write(tmp_path / "site.toml", '[[expect]]\nprofile = "generic-linux"\nmodel = "anomaly"\n'
                    'version = "1.0.0"\n')
        create_manifest(src, key.private, tmp_path / "m.json")
        rc, doc, out, err = cli("versions", ssh, serial, "--manifest", str(tmp_path / "m.json"), "--key",
                                str(key.public), "--json")
        assert rc == 1, (out, err)
        assert [(d["device"], d["status"]) for d in doc["devices"]] == [(ssh, "ok"), (serial, "drift")]

        sim.stop_device(serial)  # the cable comes out: the other device is still checked
        rc, doc, out, err = cli("versions", ssh, serial, "--manifest", str(tmp_path / "m.json"), "--key",
                                str(key.public), "--timeout", "3", "--json")
        assert rc == 3 and [d["status"] for d in doc["devices"]] == ["ok", "unreachable"], (out, err)


def test_models_list_reports_the_active_digest(home: Home, device_root: Path, key, releases) -> None:
    add_device(home, "press-1", f"local:{device_root}")
    install(home, "press-1", key, releases["v1"])
    rc, doc, out, err = cli("models", "press-1", "--json")
    assert rc == 0 and doc["models"][0]["digest"] == releases["v1"].digest, (out, err)


# ---- inventory groups --------------------------------------------------------------------------------
def test_groups_in_the_inventory(home: Home, tmp_path: Path) -> None:
    rc, _, out, err = cli("devices", "add", "cam-1", f"local:{tmp_path}", "--group", "line3", "--group", "hall-b")
    assert rc == 0 and "groups line3, hall-b" in out, err
    assert cli("devices", "add", "cam-2", f"local:{tmp_path}", "--group", "line3")[0] == 0
    assert cli("devices", "add", "cam-3", f"local:{tmp_path}")[0] == 0
    rc, doc, _, _ = cli("devices", "list", "--json")
    assert [(d["name"], d["groups"]) for d in doc["devices"]] == [("cam-1", ["line3", "hall-b"]),
                                                                  ("cam-2", ["line3"]), ("cam-3", [])]
    rc, _, out, _ = cli("devices", "list")
    assert "GROUPS" in out and "line3, hall-b" in out
    assert [d.name for d in devices_in_group(home, "line3")] == ["cam-1", "cam-2"]
    assert 'groups = ["line3", "hall-b"]' in home.inventory.read_text()
    assert "\ngroups = " not in home.inventory.read_text().split('name = "cam-3"')[1]  # none: not written

    for word in ("all", "verify", "list"):
        rc, _, _, err = cli("devices", "add", "cam-4", f"local:{tmp_path}", "--group", word)
        assert rc == 2 and f"'{word}' is a reserved word" in err, err
    rc, _, _, err = cli("devices", "add", "cam-4", f"local:{tmp_path}", "--group", "line 3")
    assert rc == 2 and 'group name "line 3" is not valid' in err, err
    assert [d.name for d in load_inventory(home)] == ["cam-1", "cam-2", "cam-3"]


def test_an_inventory_written_before_groups_still_loads(home: Home) -> None:
    home.ensure()
    home.inventory.write_text('version = 1\n\n[[devices]]\nname = "a"\ntarget = "local:"\nprofile = "generic-linux"\n'
                              'notes = ""\nadded = "2026-01-02T03:04:05+00:00"\n')
    [d] = load_inventory(home)
    assert d.groups == ()
    add_device(home, "b", "local:", groups=["line3"])
    assert [(d.name, d.groups) for d in load_inventory(home)] == [("a", ()), ("b", ("line3",))]


@pytest.mark.parametrize(("groups", "expected"), [
    ('"line3"', "expected a list of names"),
    ("[1]", "expected a list of names"),
    ('["all"]', "'all' is a reserved word"),
    ('["no spaces"]', 'group name "no spaces" is not valid'),
])
def test_bad_groups_in_the_inventory_file(home: Home, groups: str, expected: str) -> None:
    home.ensure()
    home.inventory.write_text(f'[[devices]]\nname = "a"\ntarget = "local:"\ngroups = {groups}\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(home)
    assert info.value.message.startswith(f'{home.inventory}: device #1 "a": groups') and expected in info.value.message


# scripts/bench/versions.py --tiny runs in tests/test_bench_scripts.py (with every other benchmark)
