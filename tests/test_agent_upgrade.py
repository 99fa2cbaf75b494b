"""``fieldkit agent upgrade``: the agent installed on a simulated serial device (installed where
install.sh puts it, served by a simulated systemd unit that really restarts it from the installed
file) is replaced over an authenticated session, and whatever fails or is killed, an agent that
answers stays installed."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldkit.agent import AGENT_VERSION
from fieldkit.agentupgrade import upgrade_agent
from fieldkit.devices import open_session
from fieldkit.errors import DeviceError
from fieldkit.journal import Journal
from fieldkit.link.zipapp import AgentArchive, agent_archive
from fieldkit.locations import Home
from fieldkit.sim import Simulation
from fieldkit.sim.unit import install_agent, installed_agent, unit_state

QUICK = {"dead_after_s": 3.0}  # the agent is killed on purpose: find out soon


def patched_archive(version: str, main: bytes | None = None) -> AgentArchive:
    """This fieldkit's agent zipapp with another version string (and another ``__main__.py``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(agent_archive().data)) as src, \
            zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "fieldkit/agent/__init__.py":
                data = re.sub(rb'AGENT_VERSION = "[^"]*"', b'AGENT_VERSION = "' + version.encode() + b'"', data)
            if info.filename == "__main__.py" and main is not None:
                data = main
            dst.writestr(info, data)
    data = buf.getvalue()
    return AgentArchive(data, hashlib.sha256(data).hexdigest())


# A new agent that passes its pre-check (`version` answers) but cannot serve: exits at once, or hangs.
EXITS_ON_SERVE = (b"import sys\nif sys.argv[1:2] == ['serve']:\n    sys.exit(3)\n"
                  b"from fieldkit.agent.__main__ import main\nsys.exit(main())\n")
HANGS_ON_SERVE = (b"import sys, time\nif sys.argv[1:2] == ['serve']:\n    time.sleep(3600)\n"
                  b"from fieldkit.agent.__main__ import main\nsys.exit(main())\n")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upgrade_state(root: Path) -> dict | None:
    path = Path(str(installed_agent(root)) + ".upgrade.json")
    return json.loads(path.read_text()) if path.exists() else None


def device_events(root: Path) -> list[dict]:
    path = root / "var/lib/fieldkit/journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def laptop_entries(home: Home, device: str, action: str) -> list:
    with Journal.open(home) as j:
        return [e for e in j.entries(device=device) if e.action == action]


def staged_files(root: Path) -> list[str]:
    return sorted(p.name for p in installed_agent(root).parent.glob("*.new*"))


def answers(home: Home, name: str) -> tuple[str, str | None]:
    """(version, sha256 of its zipapp) of the agent that answers on the device now."""
    with open_session(name, home, witness=False) as s:
        st = s.call("agent_upgrade_status")
        assert s.hello.agent_version == st.version
        return st.version, st.sha256


@pytest.fixture
def serial_sim(home: Home):
    with Simulation(home, ssh=0, serial=1) as sim:
        yield sim, sim.devices[0].name, Path(sim.devices[0].root)


def test_upgrade_replaces_the_installed_agent_and_keeps_the_old_one(home: Home, serial_sim) -> None:
    sim, name, root = serial_sim
    pyz = installed_agent(root)
    old_sha = sha(pyz)
    assert old_sha == agent_archive().sha256 and answers(home, name) == (AGENT_VERSION, old_sha)
    new = patched_archive("9.9.9")
    starts = unit_state(sim.base / "units", f"fieldkit-agent@{name}.service")["starts"]

    res = upgrade_agent(home, name, archive=new, **QUICK)
    assert (res.result, res.exit_code, res.old_version, res.new_version) == ("upgraded", 0, AGENT_VERSION, "9.9.9")
    assert (res.old_sha256, res.new_sha256) == (old_sha, new.sha256)
    assert sha(pyz) == new.sha256 and pyz.stat().st_mode & 0o777 == 0o644
    assert sha(Path(str(pyz) + ".previous")) == old_sha and res.previous.endswith("fieldkit-agent.pyz.previous")
    state = upgrade_state(root)
    assert state["state"] == "committed" and state["new"]["sha256"] == new.sha256 and state["tries"] == 1
    assert unit_state(sim.base / "units", f"fieldkit-agent@{name}.service")["starts"] == starts + 1  # one restart
    assert answers(home, name) == ("9.9.9", new.sha256)

    entry = laptop_entries(home, name, "agent.upgrade")[-1]
    assert entry.outcome == "ok"
    assert {k: entry.details[k] for k in ("from_version", "to_version", "from_sha256", "digest", "result")} == {
        "from_version": AGENT_VERSION, "to_version": "9.9.9", "from_sha256": old_sha, "digest": new.sha256,
        "result": "upgraded"}
    events = [e["event"] for e in device_events(root)]
    assert events.index("agent.upgrade") < events.index("agent.upgrade.commit")

    # Powered off and on again: the unit starts the installed file, which is now the new agent itself.
    sim.stop_device(name)
    sim.start_device(name)
    with open_session(name, home, witness=False) as s:
        st = s.call("agent_upgrade_status", {"sha256": new.sha256})
        assert (st.version, st.running, st.trial, st.upgradable) == ("9.9.9", st.installed, False, True)
    assert staged_files(root) == []  # the start removed the staged copy it no longer runs from

    again = upgrade_agent(home, name, archive=new, **QUICK)
    assert again.result == "unchanged" and again.exit_code == 0 and "already" in again.message
    back = upgrade_agent(home, name, archive=agent_archive(), downgrade=True, **QUICK)  # 9.9.9 -> this one
    assert back.result == "upgraded" and answers(home, name) == (AGENT_VERSION, old_sha)


def test_a_corrupted_upload_is_refused_by_its_digest_and_the_old_agent_still_answers(home: Home, serial_sim) -> None:
    _, name, root = serial_sim
    pyz = installed_agent(root)
    old_sha = sha(pyz)
    new = patched_archive("9.9.9")

    # The bytes that reach the device are not the ones hashed before sending: put refuses them.
    damaged = bytearray(new.data)
    damaged[len(damaged) // 2] ^= 0x01
    with pytest.raises(DeviceError) as exc:
        upgrade_agent(home, name, archive=AgentArchive(bytes(damaged), new.sha256), **QUICK)
    assert exc.value.code == "digest_mismatch", exc.value
    assert laptop_entries(home, name, "agent.upgrade")[-1].outcome == "failed"

    # The staged copy changed on the device after the upload: agent_upgrade refuses it and removes it.
    with open_session(name, home) as s:
        st = s.call("agent_upgrade_status", {"sha256": new.sha256})
        tmp = root / "upload.pyz"
        tmp.write_bytes(new.data)
        s.upload(tmp, st.staging, size=len(new.data))  # no digest: taken as it comes
        staged = root / st.staging.lstrip("/")
        data = bytearray(staged.read_bytes())
        data[100] ^= 0xFF
        staged.write_bytes(bytes(data))
        with pytest.raises(DeviceError) as exc:
            s.call("agent_upgrade", {"sha256": new.sha256})
        assert exc.value.code == "digest_mismatch" and "nothing was changed" in exc.value.message
        assert not staged.exists()
        # Not a zipapp at all (but its digest is right): refused before anything changes.
        junk = b"#!/bin/sh\necho 9.9.9\n"
        tmp.write_bytes(junk)
        junk_sha = hashlib.sha256(junk).hexdigest()
        s.upload(tmp, s.call("agent_upgrade_status", {"sha256": junk_sha}).staging, sha256=junk_sha)
        with pytest.raises(DeviceError) as exc:
            s.call("agent_upgrade", {"sha256": junk_sha})
        assert exc.value.code == "bad_agent" and "not a zip archive" in exc.value.message
    assert sha(pyz) == old_sha and upgrade_state(root) is None and staged_files(root) == []
    assert answers(home, name) == (AGENT_VERSION, old_sha)


def test_a_new_agent_that_does_not_serve_is_rolled_back(home: Home, serial_sim) -> None:
    _, name, root = serial_sim
    pyz = installed_agent(root)
    old_sha = sha(pyz)
    res = upgrade_agent(home, name, archive=patched_archive("9.9.9", EXITS_ON_SERVE), **QUICK)
    assert (res.result, res.exit_code) == ("reverted", 4)
    assert f"went back to agent {AGENT_VERSION}" in res.message and "ended (status 3) before it was confirmed" \
        in res.message, res.message
    assert sha(pyz) == old_sha and not Path(str(pyz) + ".previous").exists() and staged_files(root) == []
    state = upgrade_state(root)
    assert state["state"] == "reverted" and state["tries"] == 1
    assert answers(home, name) == (AGENT_VERSION, old_sha)
    entry = laptop_entries(home, name, "agent.upgrade")[-1]
    assert entry.outcome == "failed" and entry.details["result"] == "reverted"
    assert "agent.upgrade.revert" in [e["event"] for e in device_events(root)]


def test_a_laptop_that_stopped_waiting_confirms_on_the_next_run(home: Home, serial_sim) -> None:
    import threading

    from fieldkit.errors import Cancelled

    _, name, root = serial_sim
    old_sha = sha(installed_agent(root))
    new = patched_archive("9.9.9")
    cancel = threading.Event()

    def stop_at_restart(ev: dict) -> None:
        if ev["stage"] == "restart":
            cancel.set()  # Ctrl-C while the device restarts into the new agent

    with pytest.raises(Cancelled) as exc:
        upgrade_agent(home, name, archive=new, progress=stop_at_restart, cancel=cancel, **QUICK)
    assert "goes back to the old one by itself" in exc.value.message
    assert laptop_entries(home, name, "agent.upgrade")[-1].outcome == "cancelled"
    assert upgrade_state(root)["state"] == "pending" and sha(installed_agent(root)) == old_sha
    deadline, tick = time.monotonic() + 30, threading.Event()
    while upgrade_state(root).get("step") != "trial":  # the device restarted into its trial meanwhile
        assert time.monotonic() < deadline, upgrade_state(root)
        tick.wait(0.05)
    res = upgrade_agent(home, name, archive=new, **QUICK)  # run again: the trial is still on, confirm it
    assert (res.result, res.old_version, res.old_sha256) == ("upgraded", AGENT_VERSION, old_sha), res.message
    assert laptop_entries(home, name, "agent.upgrade")[-1].details["resumed"] is True
    assert answers(home, name) == ("9.9.9", new.sha256) and sha(installed_agent(root)) == new.sha256


def test_a_new_agent_that_never_answers_is_ended_at_the_trial_deadline(home: Home, serial_sim) -> None:
    _, name, root = serial_sim
    old_sha = sha(installed_agent(root))
    res = upgrade_agent(home, name, archive=patched_archive("9.9.9", HANGS_ON_SERVE), trial_s=5.0, **QUICK)
    assert res.result == "reverted" and "was not confirmed within 5 s" in res.message, res.message
    assert sha(installed_agent(root)) == old_sha and answers(home, name) == (AGENT_VERSION, old_sha)


def test_an_unauthenticated_serial_session_may_not_upgrade(home: Home) -> None:
    with Simulation(home, ssh=0, serial=1, operator_key=False) as sim:
        name, root = sim.devices[0].name, Path(sim.devices[0].root)
        old_sha = sha(installed_agent(root))
        new = patched_archive("9.9.9")
        with pytest.raises(DeviceError) as exc:
            upgrade_agent(home, name, archive=new, **QUICK)
        assert exc.value.code == "not_authenticated" and "nothing was changed" in exc.value.message
        with open_session(name, home) as s:  # the device itself refuses the operations, whatever the laptop does
            assert not s.auth.ok
            for op in ("agent_upgrade", "agent_upgrade_confirm"):
                with pytest.raises(DeviceError) as exc:
                    s.call(op, {"sha256": new.sha256})
                assert exc.value.code == "not_authenticated" and op in exc.value.message
            st = s.call("agent_upgrade_status", {"sha256": new.sha256})  # reading stays open
            with pytest.raises(DeviceError) as exc:
                s.upload(io.BytesIO(new.data), st.staging, size=len(new.data), sha256=new.sha256)
            assert exc.value.code == "not_authenticated"
        assert sha(installed_agent(root)) == old_sha and staged_files(root) == [] and upgrade_state(root) is None


def test_an_agent_that_is_not_the_installed_one_refuses(home: Home, device_root: Path) -> None:
    from fieldkit.link.client import DeviceLink
    from fieldkit.link.local import ProcessStream

    install_agent(device_root)
    new = patched_archive("9.9.9")
    # pushed for the session (local: and SSH run a copy from a cache): refused, the reason names both files
    target = f"local:{device_root}"
    with open_session(target, home) as s:
        st = s.call("agent_upgrade_status")
        assert not st.upgradable and st.code == "not_installed" and st.installed_sha256 == agent_archive().sha256
        assert "pushes one for each SSH or local session" in st.reason and st.installed in st.reason
        with pytest.raises(DeviceError) as exc:
            s.call("agent_upgrade", {"sha256": new.sha256})
        assert exc.value.code == "not_installed"
    with pytest.raises(DeviceError) as exc:
        upgrade_agent(home, target, archive=new)
    assert exc.value.code == "not_installed" and "nothing was changed" in exc.value.message

    # run from a source tree
    proc = subprocess.Popen([sys.executable, "-m", "fieldkit.agent", "serve", "--stdio", "--root", str(device_root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    link = DeviceLink(ProcessStream(proc), name="source", transport="local").start(timeout=30)
    try:
        st = link.call("agent_upgrade_status")
        assert st["code"] == "not_installed" and "source tree" in st["reason"] and st["sha256"] is None
    finally:
        link.close()
    # an installed agent outside any unit cannot restart into the new one
    link = _installed_stdio(device_root, {})
    try:
        st = link.call("agent_upgrade_status")
        assert st["code"] == "no_unit" and st["running"] == st["installed"]
    finally:
        link.close()
    assert not list(device_root.rglob("*.new")) and upgrade_state(device_root) is None


def _installed_stdio(root: Path, env: dict):
    """The installed agent served on stdio (as `fieldkit-agent serve --stdio` on the device)."""
    import os

    from fieldkit.link.client import DeviceLink
    from fieldkit.link.local import ProcessStream

    proc = subprocess.Popen([sys.executable, str(installed_agent(root)), "serve", "--stdio", "--root", str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("FIELDKIT_AGENT_")},
                                 **env})
    return DeviceLink(ProcessStream(proc), name="installed", transport="local").start(timeout=30)


@pytest.mark.parametrize("step, every_time", [
    ("agent_upgrade:pending", False), ("agent_upgrade:restart", False), ("agent_upgrade:trial", False),
    ("agent_upgrade:trial", True), ("agent_upgrade:confirming", False), ("agent_upgrade:previous", False),
    ("agent_upgrade:swapped", False)])
def test_a_kill_at_any_step_leaves_an_agent_that_answers(home: Home, monkeypatch, tmp_path: Path, step: str,
                                                         every_time: bool) -> None:
    """SIGKILL at each step (the unit restarts what died): the upgrade ends committed or reverted,
    never half done, and an agent answers."""
    monkeypatch.setenv("FIELDKIT_AGENT_CRASH_AT", step)
    if not every_time:
        monkeypatch.setenv("FIELDKIT_AGENT_CRASH_ONCE", str(tmp_path / "killed"))
    with Simulation(home, ssh=0, serial=1) as sim:
        name, root = sim.devices[0].name, Path(sim.devices[0].root)
        pyz = installed_agent(root)
        old_sha = sha(pyz)
        new = patched_archive("9.9.9")
        res = upgrade_agent(home, name, archive=new, **QUICK)
        assert every_time or (tmp_path / "killed").exists()  # the kill happened
        if every_time:  # the old agent dies every time it would start the new one: it gives up after 3 starts
            assert res.result == "reverted" and "started 3 times and never confirmed" in res.message, res.message
            want = (AGENT_VERSION, old_sha)
        else:  # the start after the kill carries it through
            assert res.result == "upgraded", res.message
            want = ("9.9.9", new.sha256)
        assert answers(home, name) == want and sha(pyz) == want[1]
        assert upgrade_state(root)["state"] == ("reverted" if want[1] == old_sha else "committed")


def test_recover_at_boot_reverts_an_upgrade_nobody_confirmed(home: Home, device_root: Path, tmp_path: Path) -> None:
    """Power lost after the device took the upgrade, before its unit restarted: the boot unit's
    `fieldkit-agent recover` puts things back; the installed agent is the old one and answers."""
    pyz = install_agent(device_root)
    old_sha = sha(pyz)
    systemctl = tmp_path / "systemctl"
    systemctl.write_text("#!/bin/sh\nexit 0\n")
    systemctl.chmod(0o755)
    new = patched_archive("9.9.9")
    env = {"FIELDKIT_AGENT_UNIT": "fieldkit-agent@ttyS0.service", "FIELDKIT_AGENT_SYSTEMCTL": str(systemctl),
           "FIELDKIT_AGENT_CRASH_AT": "agent_upgrade:restart"}
    link = _installed_stdio(device_root, env)
    try:
        st = link.call("agent_upgrade_status", {"sha256": new.sha256})
        assert st["upgradable"] and st["unit"] == "fieldkit-agent@ttyS0.service"
        link.upload(io.BytesIO(new.data), st["staging"], size=len(new.data), sha256=new.sha256)
        res = link.call("agent_upgrade", {"sha256": new.sha256, "trial_s": 30})
        assert res["state"] == "pending" and res["new"] == {"version": "9.9.9", "sha256": new.sha256}
        assert upgrade_state(device_root)["state"] == "pending"
    finally:
        link.close()  # the agent then dies (SIGKILL) where it would have restarted its unit
    assert upgrade_state(device_root)["state"] == "pending" and sha(pyz) == old_sha

    rec = subprocess.run([sys.executable, str(pyz), "recover", "--root", str(device_root)], capture_output=True,
                         text=True, timeout=60)
    assert rec.returncode == 0, rec.stderr
    doc = json.loads(rec.stdout)
    assert doc["recovered"] == [] and doc["agent"]["action"] == "reverted" and "not confirmed" in doc["agent"]["reason"]
    assert sha(pyz) == old_sha and upgrade_state(device_root)["state"] == "reverted"
    assert not list(pyz.parent.glob("*.new"))
    version = subprocess.run([sys.executable, str(pyz), "version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == AGENT_VERSION
    again = subprocess.run([sys.executable, str(pyz), "recover", "--root", str(device_root)], capture_output=True,
                           text=True, timeout=60)
    assert json.loads(again.stdout) == {"recovered": []}  # nothing left to do


def test_cli_upgrades_an_older_installed_agent(home: Home, serial_sim) -> None:
    sim, name, root = serial_sim
    old = patched_archive("0.0.1")
    sim.stop_device(name)
    install_agent(root, old.data)  # the device was installed from an older bundle
    sim.start_device(name)

    proc = run_cli("agent", "upgrade", name, "--json", timeout=180, input="")
    assert proc.returncode == 2 and "--yes" in proc.stderr and sha(installed_agent(root)) == old.sha256  # no terminal
    proc = run_cli("agent", "upgrade", name, "--yes", "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["result"], doc["old_version"], doc["new_version"]) == ("upgraded", "0.0.1", AGENT_VERSION)
    assert doc["new_sha256"] == sha(installed_agent(root)) and doc["old_sha256"] == old.sha256
    proc = run_cli("agent", "upgrade", name, "--yes", timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("unchanged:"), proc.stdout + proc.stderr
    proc = run_cli("agent", "upgrade", name, "--yes", "--trial", "1")
    assert proc.returncode == 2 and "--trial" in proc.stderr


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
                    max_leaves=20)
STATE_KEYS = st.fixed_dictionaries({}, optional={
    "state": st.sampled_from(["pending", "committed", "reverted", "other"]) | JSON,
    "step": st.sampled_from(["staged", "trial", "confirming", None]) | JSON,
    "old": st.fixed_dictionaries({"version": st.text(max_size=8) | JSON, "sha256": st.just("a" * 64) | JSON}) | JSON,
    "new": st.fixed_dictionaries({"version": st.text(max_size=8) | JSON, "sha256": st.just("b" * 64) | JSON}) | JSON,
    "tries": JSON, "trial_s": JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=STATE_KEYS | JSON, raw=st.none() | st.binary(max_size=64))
def test_a_damaged_upgrade_state_is_a_coded_error_and_never_stops_the_agent(tmp_path_factory, doc, raw) -> None:
    """Whatever the state file holds, reading it gives a checked state or ``bad_state``, and the
    installed agent's start (on_start) serves on instead of failing."""
    from fieldkit.agent import upgrade
    from fieldkit.agent.files import DeviceRoot
    from fieldkit.agent.protocol import RemoteError

    root = tmp_path_factory.mktemp("dev")
    agent = upgrade.Agent.open(DeviceRoot(str(root)))
    Path(agent.dir).mkdir(parents=True, exist_ok=True)
    Path(agent.state_path).write_bytes(raw if raw is not None else json.dumps(doc).encode())
    try:
        state = agent.read_state()
    except RemoteError as exc:
        assert exc.code == "bad_state" and ("remove it" in exc.message or "not valid JSON" in exc.message)
    else:
        assert state["state"] in ("pending", "committed", "reverted")
        assert all(len(state[k]["sha256"]) == 64 for k in ("old", "new"))
    assert upgrade.on_start(str(root), ["serve"]) is None  # not the installed agent here: it only serves
    done = upgrade.recover(str(root))  # the boot unit: reports, never raises
    assert done is None or done["action"] in ("error", "reverted")
