"""Into an air-gapped plant (issue 14): the laptop's offline bundle (scripts/make_offline_bundle.sh, a
wheelhouse installed with ``--no-index``) and the device's (``fieldkit agent bundle``: zipapp, units,
install.sh with the device's own sh and Python), each installed and then used for real."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from fieldkit.agent import AGENT_VERSION
from fieldkit.agentbundle import AGENT_FILE, RECOVER_UNIT, SERIAL_UNIT
from fieldkit.link.zipapp import agent_archive
from fieldkit.signing import generate_private_key, key_fingerprint, public_key_pem

# No network for what must work offline: any attempt to reach an index goes to a closed port.
NO_NET = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
          "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(NO_NET)
    env.update(extra)
    return env


def _pub_key(path: Path) -> tuple[Path, str]:
    key = generate_private_key()
    path.write_text(public_key_pem(key.public_key()))
    return path, key_fingerprint(key.public_key())


# ---- the laptop ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_laptop_bundle_installs_and_runs_with_no_index(tmp_path: Path) -> None:
    out = tmp_path / "fieldkit-offline"
    t0 = time.monotonic()
    build = subprocess.run(["bash", str(ROOT / "scripts" / "make_offline_bundle.sh"), str(out), "--with-models",
                            "--python", sys.executable], capture_output=True, text=True, timeout=800, cwd=str(tmp_path))
    build_s = time.monotonic() - t0
    if build.returncode == 3:
        pytest.skip(f"the package index cannot be reached to build the bundle: {build.stderr.strip()[-300:]}")
    assert build.returncode == 0, build.stdout + build.stderr
    wheels = sorted(p.name for p in (out / "wheelhouse").iterdir())
    for dist in ("fieldkit-", "textual-", "onnxruntime-", "numpy-", "pyserial-", "paramiko-", "cryptography-",
                 "psutil-", "pydantic-", "ecdsa-", "rich-"):
        assert any(w.startswith(dist) for w in wheels), (dist, wheels)
    assert all(w.endswith(".whl") for w in wheels)
    assert "## Offline install" in (out / "README.md").read_text()
    assert {p.name for p in (out / "models").iterdir()} >= {"mobilenetv2-like-int8.onnx", "anomaly-tabular.onnx"}
    listed = {line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert "install.sh" in listed and any(n.startswith("wheelhouse/fieldkit-") for n in listed)
    assert len(listed) == sum(1 for p in out.rglob("*") if p.is_file() and p.name not in ("SHA256SUMS", ".fieldkit-offline-bundle"))

    venv = tmp_path / "laptop" / "venv"
    home = tmp_path / "laptop"
    env = _clean_env(HOME=str(home), FIELDKIT_HOME=str(home / "fieldkit"))
    t0 = time.monotonic()
    inst = subprocess.run(["sh", str(out / "install.sh"), "--venv", str(venv), "--python", sys.executable, "--no-link"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    install_s = time.monotonic() - t0
    assert inst.returncode == 0, inst.stdout + inst.stderr
    fk = venv / "bin" / "fieldkit"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import fieldkit; print(fieldkit.__file__)"],
                           capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert str(venv) in where.stdout, where  # the installed copy, not this checkout
    ver = subprocess.run([str(fk), "--version"], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert ver.returncode == 0 and ver.stdout.strip() == f"fieldkit {AGENT_VERSION}", ver
    demo = subprocess.run([str(fk), "demo", "--text"], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo-ssh-1" in demo.stdout and "demo-serial-1" in demo.stdout

    wheelhouse_mb = sum(p.stat().st_size for p in (out / "wheelhouse").iterdir()) / 1e6
    print(f"\nlaptop bundle: {len(wheels)} wheels, wheelhouse {wheelhouse_mb:.1f} MB, "
          f"build {build_s:.1f} s, offline install {install_s:.1f} s")

    # A changed file is refused before pip runs.
    (out / "wheelhouse" / wheels[0]).write_bytes(b"tampered")
    bad = subprocess.run(["sh", str(out / "install.sh"), "--venv", str(tmp_path / "venv2"), "--python", sys.executable,
                          "--no-link"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 1 and "SHA256SUMS" in bad.stderr and not (tmp_path / "venv2").exists()


# ---- the device ---------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_agent_bundle_installs_into_a_root_and_serves_on_a_serial_line(tmp_path: Path, home) -> None:
    from fieldkit.sim.ptyrelay import PtyRelay

    rel, rel_fp = _pub_key(tmp_path / "rel.pub.pem")
    op, op_fp = _pub_key(tmp_path / "op.pub.pem")
    bundle = tmp_path / "agent-bundle"
    proc = run_cli("agent", "bundle", "--out", str(bundle), "--release-key", str(rel), "--operator-key", str(op),
                   "--inference-service", "defects-infer", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (bundle / AGENT_FILE).read_bytes() == agent_archive().data  # the one archive, verifier inside
    assert doc["agent_sha256"] == agent_archive().sha256
    assert {k["fingerprint"] for k in doc["keys"]} == {rel_fp, op_fp}
    assert {"install.sh", AGENT_FILE, f"systemd/{SERIAL_UNIT}", f"systemd/{RECOVER_UNIT}", "SHA256SUMS"} <= set(doc["files"])
    assert "Before=defects-infer.service" in (bundle / "systemd" / RECOVER_UNIT).read_text()
    print(f"\ndevice bundle: {doc['size'] / 1e3:.0f} kB (agent zipapp {doc['files'][AGENT_FILE] / 1e3:.0f} kB)")

    # 1. Into a root without a fieldkit group: everything placed, modes set, ownership left, said so.
    root = tmp_path / "device"
    py = sys.executable
    t0 = time.monotonic()
    inst = subprocess.run(["sh", str(bundle / "install.sh"), "--root", str(root), "--python", py],
                          capture_output=True, text=True, timeout=60, env=_clean_env())
    install_s = time.monotonic() - t0
    assert inst.returncode == 0, inst.stdout + inst.stderr
    assert "no group fieldkit" in inst.stdout and "ownership left" in inst.stdout
    pyz = root / "usr/local/lib/fieldkit" / AGENT_FILE
    assert pyz.read_bytes() == agent_archive().data
    wrapper = (root / "usr/local/bin/fieldkit-agent").read_text()
    assert f'exec "{py}" /usr/local/lib/fieldkit/{AGENT_FILE} "$@"' in wrapper
    assert _mode(root / "usr/local/bin/fieldkit-agent") == 0o755
    for unit in (SERIAL_UNIT, RECOVER_UNIT):
        assert (root / "etc/systemd/system" / unit).read_text() == (bundle / "systemd" / unit).read_text()
    expect = {"etc/fieldkit": 0o755, "etc/fieldkit/trust": 0o2775, "etc/fieldkit/operators": 0o2755,
              "var/lib/fieldkit": 0o2775, "var/lib/fieldkit/models": 0o2775, "var/lib/fieldkit/staging": 0o2775,
              "var/lib/fieldkit/journal.jsonl": 0o664}
    for rel_path, mode in expect.items():
        assert _mode(root / rel_path) == mode, (rel_path, oct(_mode(root / rel_path)))
    assert len(list((root / "etc/fieldkit/trust").glob("key-*.pem"))) == 1
    assert len(list((root / "etc/fieldkit/operators").glob("key-*.pem"))) == 1

    # 2. Again, now that the image has the group: an upgrade in place, owned root:fieldkit when root.
    (root / "etc/group").write_text("root:x:0:\nfieldkit:x:4242:\n")
    again = subprocess.run(["sh", str(bundle / "install.sh"), "--root", str(root), "--python", py],
                           capture_output=True, text=True, timeout=60, env=_clean_env())
    assert again.returncode == 0, again.stdout + again.stderr
    if os.geteuid() == 0:
        for rel_path in expect:
            st = (root / rel_path).stat()
            assert (st.st_uid, st.st_gid) == (0, 4242), rel_path
        assert (root / "etc/fieldkit/trust").stat().st_gid == 4242
    else:
        assert "not running as root" in again.stdout
    for rel_path, mode in expect.items():  # chown did not clear the setgid bits
        assert _mode(root / rel_path) == mode, rel_path

    # 3. The installed agent, run as the device runs it (no site-packages: only the zipapp and the
    #    stdlib), serves on one end of a pty pair; the laptop reaches it with `fieldkit health`.
    relay = PtyRelay()
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen([py, "-I", "-S", str(pyz), "serve", "--serial", relay.device_path, "--baud", "115200",
                              "--root", str(root)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        target = f"serial://{relay.laptop_path}?baud=115200"
        proc = run_cli("health", "--json", target)
        assert proc.returncode in (0, 1), proc.stderr + (tmp_path / "agent.log").read_text()
        health = json.loads(proc.stdout)
        assert health["agent"]["root"] == str(root) and health["memory"]["total"] > 0
        proc = run_cli("anchors", "list", target, "--json")  # the release key install.sh placed is trusted
        assert proc.returncode == 0, proc.stderr
        assert [k["fingerprint"] for k in json.loads(proc.stdout)["release_keys"]] == [rel_fp]
        assert agent.poll() is None
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()
        relay.close()
    lines = (root / "var/lib/fieldkit/journal.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["hash"] for line in lines)  # the pre-created journal is the agent's

    rec = subprocess.run([py, "-I", "-S", str(pyz), "recover", "--root", str(root)], capture_output=True, text=True,
                         timeout=60)
    assert rec.returncode == 0 and json.loads(rec.stdout) == {"recovered": []}, rec.stderr
    print(f"device install.sh: {install_s:.2f} s")


def test_agent_bundle_refuses_bad_input_and_install_refuses_a_changed_bundle(tmp_path: Path) -> None:
    priv = tmp_path / "rel.pem"
    assert run_cli("release", "keygen", "--out", str(priv)).returncode == 0
    proc = run_cli("agent", "bundle", "--out", str(tmp_path / "b"), "--release-key", str(priv))
    assert proc.returncode == 2 and "not an ECDSA P-256 public key" in proc.stderr
    assert not (tmp_path / "b").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    proc = run_cli("agent", "bundle", "--out", str(busy))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (busy / "notes.txt").read_text() == "mine"

    bundle = tmp_path / "b"
    assert run_cli("agent", "bundle", "--out", str(bundle)).returncode == 0
    assert run_cli("agent", "bundle", "--out", str(bundle)).returncode == 0  # a previous bundle is replaced
    assert not (bundle / "keys").exists()
    with open(bundle / AGENT_FILE, "ab") as fh:
        fh.write(b"\0")
    root = tmp_path / "root"
    proc = subprocess.run(["sh", str(bundle / "install.sh"), "--root", str(root), "--python", sys.executable],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "SHA256SUMS" in proc.stderr
    assert not (root / "usr").exists()
    proc = subprocess.run(["sh", str(bundle / "install.sh"), "--root", str(root), "--python", "/nonexistent/python3"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "needs Python >= 3.6" in proc.stderr
