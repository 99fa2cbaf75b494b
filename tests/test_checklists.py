"""Checklists and their signed reports: each bundled checklist end to end on simulated devices (SSH,
serial, local:) with the real agent, real signed releases, real smoke tests and the real journal.

What a technician relies on is what these tests assert: which model is active afterwards, that a
failing check stops or branches as the checklist declares, that a pulled cable and `resume` never
apply an action twice (counted in the journal), that an unanswered confirm is never assumed, and that
a report changed by one byte, or signed by someone else, does not verify.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import lenient_profile, run_cli
from models import models  # noqa: F401  (session fixture)

from fieldkit.checklists import (
    Answer,
    ChecklistError,
    RunInputs,
    get_checklist,
    load_run,
    resume_run,
    start_run,
)
from fieldkit.devices import open_session
from fieldkit.install import install_release
from fieldkit.inventory import add_device
from fieldkit.journal import Journal
from fieldkit.locations import Home
from fieldkit.manifest import create_manifest
from fieldkit.modelstore import add_anchor, read_public_key
from fieldkit.release import create_release, keygen
from fieldkit.report import ReportError, verify_report, write_report

ANOMALY = "anomaly-tabular"
MODELS_DIR = "var/lib/fieldkit/models"
PROFILE = "checklist-test"

LENIENT_PROFILE = lenient_profile(PROFILE, '[use_cases.scoring]\nbudget_ms = 10000\nmetric = "p99"\n')

YES = {"line-safe": True, "line-restarted": {"answer": True, "note": "restarted by <b>shift B</b>"},
       "escalate": True}


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "rel.pem")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, key, models) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("releases")
    out = {}
    for label, version in (("v1", "1.0.0"), ("v2", "2.0.0")):
        out[label] = base / f"anomaly-{version}"
        create_release(models[ANOMALY], name="anomaly", version=version, security_version=1, smoke_random=2,
                       key_path=key.private, out_dir=out[label])
    return out


@pytest.fixture
def lenient(home: Home) -> str:
    home.profiles_dir.mkdir(parents=True, exist_ok=True)
    (home.profiles_dir / f"{PROFILE}.toml").write_text(LENIENT_PROFILE)
    return PROFILE


def cli(*args: str, timeout: float = 180) -> tuple[int, dict | None, str, str]:
    proc = run_cli(*args, timeout=timeout)
    doc = json.loads(proc.stdout) if "--json" in args and proc.stdout.strip() else None
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, doc, proc.stdout, proc.stderr


def manifest(tmp_path: Path, key, expect: dict[str, str]) -> Path:
    src = tmp_path / "site.toml"
    src.write_text("".join(f'[[expect]]\ndevice = "{dev}"\nmodel = "anomaly"\nversion = "{v}"\n\n'
                           for dev, v in expect.items()))
    out = tmp_path / "site.manifest.json"
    create_manifest(src, key.private, out)
    return out


def install(home: Home, device: str, key, *dirs: Path) -> None:
    pem, fp = read_public_key(key.public)
    with open_session(device, home) as session:
        add_anchor(session, pem, fp)
        for d in dirs:
            assert install_release(session, d).result == "committed"


def active(root: Path, model: str = "anomaly") -> str | None:
    cur = Path(root) / MODELS_DIR / model / "current"
    return os.readlink(cur) if cur.is_symlink() else None


def journal_count(home: Home, device: str, action: str, **match) -> int:
    with Journal.open_readonly(home) as j:
        return sum(1 for e in j.entries(device=device, action=action)
                   if e.action == action and all(e.details.get(k) == v for k, v in match.items()))


def statuses(run) -> dict[str, str]:
    return {s.id: s.status for s in run.ordered()}


def answers(mapping: dict) -> dict[str, Answer]:
    return {k: Answer(v) if isinstance(v, bool) else Answer(v["answer"], v.get("note", "")) for k, v in mapping.items()}


def operator_pub(home: Home, tmp_path: Path) -> Path:
    from fieldkit.journal.identity import load_identity

    path = tmp_path / "operator.pub.pem"
    path.write_text(load_identity(home).public_key_pem)
    return path


# ---- the file format --------------------------------------------------------------------------------------
GOOD_STEP = '[[steps]]\nid = "a"\nkind = "confirm"\ntitle = "A?"\n'


@pytest.mark.parametrize(("body", "expected"), [
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "check"\ntitle = "B"\nchek = "health"\n',
     'step #2 (id = "b"): chek = "health": unknown key; did you mean "check"?'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "check"\ntitle = "B"\ncheck = "helth"\n',
     'step #2 (id = "b"): check = "helth": expected one of'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "check"\ntitle = "B"\n',
     'step #2 (id = "b"): check: missing; a check step needs check = one of health'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "action"\ntitle = "B"\naction = "install"\non_fail = "rescue"\n',
     'step #2 (id = "b"): on_fail = "rescue": expected stop, continue or the id of a later step'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "confirm"\ntitle = "B"\non_fail = "a"\n',
     'step #2 (id = "b"): on_fail = "a": a jump goes forward'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "confirm"\ntitle = "B"\nwhen = "c.failed"\n',
     'step #2 (id = "b"): when = "c.failed": "c" is not an earlier step'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "confirm"\ntitle = "B"\nwhen = "a.done"\n',
     'step #2 (id = "b"): when = "a.done": expected "STEP.passed" or "STEP.failed"'),
    (GOOD_STEP + GOOD_STEP, 'step #2 (id = "a"): id: "a" is already the id of step #1'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "confirm"\ntitle = "B"\naction = "install"\n',
     'step #2 (id = "b"): action: not a key of a confirm step (it belongs to action steps)'),
    (GOOD_STEP + '[[steps]]\nid = "B c"\nkind = "confirm"\ntitle = "B"\n', 'step #2 (id = "B c"): id = "B c": expected 1-63 lowercase'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "record"\ntitle = "B"\nrecord = ["health", "mood"]\n',
     'step #2 (id = "b"): record.1 = "mood": expected one of'),
    (GOOD_STEP + '[[steps]]\nid = "b"\nkind = "check"\ntitle = "B"\ncheck = "bench"\nruns = "many"\n',
     'step #2 (id = "b"): runs = "many": expected a whole number'),
    ('needs = ["wifi"]\n' + GOOD_STEP, 'needs.0 = "wifi": expected one of'),
    ('steps = []\n', "steps = []: expected at least 1 item"),
])
def test_toml_errors_name_the_file_the_step_and_the_key(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\ntitle = "Mine"\n' + body)
    with pytest.raises(ChecklistError) as info:
        get_checklist(str(path), Home(tmp_path))
    assert str(path) in info.value.message and expected in info.value.message, info.value.message


def test_the_bundled_checklists_are_valid_and_shown(home: Home) -> None:
    rc, doc, _, err = cli("checklist", "list", "--json")
    assert rc == 0, err
    assert {c["name"] for c in doc["checklists"]} >= {"rollback", "commissioning", "model-update"}
    assert all("error" not in c for c in doc["checklists"])
    rc, doc, _, err = cli("checklist", "show", "rollback", "--json")
    assert rc == 0 and doc["name"] == "rollback", err
    assert [s["id"] for s in doc["steps"]][:3] == ["line-safe", "record-before", "rollback"]
    assert set(doc["steps"][0]) >= {"id", "kind", "title"}
    rc, _, _, err = cli("checklist", "show", "rollbak")
    assert rc == 2 and 'did you mean "rollback"' in err
    assert [s.id for s in get_checklist("commissioning", home).steps] == [
        "identify", "host-key", "release-keys", "health", "bench", "install", "versions", "smoke", "record", "sign-off"]
    # "verify" can never be a run id: it is the report's verb
    rc, _, _, err = cli("checklist", "resume", "verify")
    assert rc == 2 and "not a checklist run id" in err


# ---- local: devices: the branches, the unanswered confirm, a crash between applying and recording -----------
def test_an_unanswered_confirm_stops_a_scripted_run_and_resume_finishes_it(
        home: Home, device_root: Path, releases, key, lenient, tmp_path: Path) -> None:
    add_device(home, "press-1", f"local:{device_root}", profile=lenient)
    install(home, "press-1", key, releases["v1"], releases["v2"])
    rc, doc, out, err = cli("checklist", "run", "rollback", "press-1", "--model", "anomaly", "--json")
    assert rc == 1 and doc["status"] == "stopped", (out, err)
    assert doc["steps"][0] == {"id": "line-safe", "status": "unanswered", "message": doc["steps"][0]["message"]}
    assert all(s["status"] == "pending" for s in doc["steps"][1:])
    assert active(device_root) == "2.0.0"  # never assumed: nothing was changed
    run_id = doc["run_id"]
    rc, runs, _, _ = cli("checklist", "runs", "--json")
    assert rc == 0 and runs["runs"][-1] | {"started": None, "finished": None} == {
        "run_id": run_id, "checklist": "rollback", "device": "press-1", "status": "stopped", "started": None,
        "finished": None}

    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps({"line-saef": True}))
    rc, _, _, err = cli("checklist", "resume", run_id, "--answers", str(bad))
    assert rc == 2 and "'line-saef' is not a confirm step of rollback" in err

    good = tmp_path / "answers.json"
    good.write_text(json.dumps(YES))
    rc, doc, out, err = cli("checklist", "resume", run_id, "--answers", str(good), "--json")
    assert rc == 0 and doc["status"] == "passed", (out, err)
    assert {s["id"]: s["status"] for s in doc["steps"]} == {
        "line-safe": "passed", "record-before": "passed", "rollback": "passed", "smoke": "passed",
        "health": "passed", "line-restarted": "passed", "escalate": "skipped"}
    assert active(device_root) == "1.0.0"
    rc, _, _, err = cli("checklist", "resume", run_id, "--answers", str(good))
    assert rc == 2 and "already ended: passed" in err


def test_a_failing_check_stops_or_branches_as_declared(
        home: Home, device_root: Path, releases, key, lenient, tmp_path: Path) -> None:
    add_device(home, "press-2", f"local:{device_root}", profile=lenient)
    install(home, "press-2", key, releases["v1"])
    site = manifest(tmp_path, key, {"press-2": "1.0.0"})  # the site still expects 1.0.0
    inputs = RunInputs(str(releases["v2"]), None, str(site), [str(key.public)])
    cl = get_checklist("model-update", home)

    # "no" to the first question stops the run there; nothing is installed
    run = start_run(home, cl, "press-2", inputs, answers=answers({"line-safe": False}))
    assert (run.status, run.stopped_at, run.exit_code) == ("stopped", "line-safe", 1)
    assert active(device_root) == "1.0.0" and journal_count(home, "press-2", "release.install") == 1

    # the update installs, the manifest check fails and jumps to the recovery step: a rollback
    run = start_run(home, cl, "press-2", inputs, answers=answers(
        {"line-safe": True, "line-restarted": True, "line-restarted-after-rollback": True}))
    assert run.status == "failed" and run.exit_code == 1, run.reason
    assert statuses(run) == {
        "line-safe": "passed", "record-before": "passed", "verify-installed": "passed", "install": "passed",
        "versions": "failed", "health": "skipped", "line-restarted": "skipped", "roll-back": "passed",
        "line-restarted-after-rollback": "passed"}
    assert "drift" in run.steps["versions"].message
    assert active(device_root) == "1.0.0"
    assert journal_count(home, "press-2", "model.rollback") == 1

    # a checklist of one's own: continue past a failed check, `when` on its outcome
    own = tmp_path / "own.toml"
    own.write_text('name = "own"\ntitle = "Own"\n'
                   '[[steps]]\nid = "models"\nkind = "check"\ncheck = "health"\nchecks = ["no-such-check"]\n'
                   'title = "A health check the device does not have"\non_fail = "continue"\n'
                   '[[steps]]\nid = "after-fail"\nkind = "record"\nrecord = ["models"]\ntitle = "R"\n'
                   'when = "models.failed"\n'
                   '[[steps]]\nid = "after-pass"\nkind = "record"\nrecord = ["models"]\ntitle = "R"\n'
                   'when = "models.passed"\n')
    run = start_run(home, get_checklist(str(own), home), "press-2")
    assert statuses(run) == {"models": "failed", "after-fail": "passed", "after-pass": "skipped"}
    assert run.status == "failed" and "no-such-check" in run.steps["models"].message


class _Crash(BaseException):
    """The laptop dies (lid closed, battery): nothing after this point runs."""


def test_resume_after_a_crash_between_applying_and_recording_does_not_apply_again(
        home: Home, device_root: Path, releases, key, lenient, monkeypatch: pytest.MonkeyPatch) -> None:
    from fieldkit.checklists import steps

    add_device(home, "press-3", f"local:{device_root}", profile=lenient)
    install(home, "press-3", key, releases["v1"], releases["v2"])
    real = steps.ACTION_FNS["rollback"]

    def applied_then_crash(ctx, step):
        real(ctx, step)
        raise _Crash()

    monkeypatch.setitem(steps.ACTION_FNS, "rollback", applied_then_crash)
    cl = get_checklist("rollback", home)
    started: list[str] = []
    with pytest.raises(_Crash):
        start_run(home, cl, "press-3", RunInputs(model="anomaly"), answers=answers(YES), on_started=started.append)
    assert active(device_root) == "1.0.0"
    with Journal.open_readonly(home) as j:
        run = load_run(j, started[0])
    assert run.status == "unfinished" and run.steps["rollback"].status == "started"
    assert run.steps["rollback"].plan == {"model": "anomaly", "before": "2.0.0", "target": "1.0.0"}

    monkeypatch.setitem(steps.ACTION_FNS, "rollback", real)
    run = resume_run(home, started[0], answers=answers(YES))
    assert run.status == "passed", run.reason
    assert "not applied again" in run.steps["rollback"].message
    assert active(device_root) == "1.0.0"
    assert journal_count(home, "press-3", "model.rollback") == 1


# ---- simulated serial and SSH devices ----------------------------------------------------------------------
def test_serial_model_update_then_rollback_with_the_cable_pulled_then_a_signed_report(
        home: Home, releases, key, lenient, tmp_path: Path) -> None:
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=0, serial=1, profile=lenient) as sim:
        name, root = sim.devices[0].name, Path(sim.devices[0].root)
        relay = sim.relays[name]
        install(home, name, key, releases["v1"])
        site = manifest(tmp_path, key, {name: "2.0.0"})
        run = start_run(home, get_checklist("model-update", home), name,
                        RunInputs(str(releases["v2"]), None, str(site), [str(key.public)]),
                        answers=answers({"line-safe": True, "line-restarted": True}))
        assert run.status == "passed", (run.reason, statuses(run))
        assert active(root) == "2.0.0" and run.steps["roll-back"].status == "skipped"

        def pull_at_smoke(ev: dict) -> None:
            if ev.get("event") == "step" and ev.get("step") == "smoke" and ev.get("status") == "running":
                relay.pause()  # the cable comes out after the rollback, as the smoke test starts

        cl = get_checklist("rollback", home)
        run = start_run(home, cl, name, RunInputs(model="anomaly"), answers=answers(YES), progress=pull_at_smoke)
        assert (run.status, run.exit_code, run.stopped_at) == ("stopped", 3, "smoke"), run.reason
        assert run.steps["rollback"].status == "passed" and run.steps["smoke"].status == "interrupted"
        relay.resume()
        run = resume_run(home, run.run_id, answers=answers(YES))
        assert run.status == "passed", (run.reason, statuses(run))
        assert active(root) == "1.0.0"
        assert journal_count(home, name, "model.rollback") == 1
        assert journal_count(home, name, "checklist.step", run_id=run.run_id, step="rollback") == 2  # started, passed

    # the record: HTML for the plant, report.json signed by the operator
    out = tmp_path / "report"
    doc = write_report(home, run.run_id, out)
    html = (out / "report.html").read_text()
    assert "restarted by &lt;b&gt;shift B&lt;/b&gt;" in html and "<b>shift B" not in html
    assert "http" not in html.replace("http-equiv", "") and "<script" not in html
    pub = operator_pub(home, tmp_path)
    res = verify_report(out / "report.json", [pub])
    assert res.signer == doc["signer"] and res.doc["run"]["status"] == "passed"
    assert [s["status"] for s in res.doc["steps"]][:3] == ["passed", "passed", "passed"]
    assert res.doc["device"]["name"] == name and res.doc["health"]["status"]

    data = (out / "report.json").read_bytes()
    for i in (data.index(b'"passed"') + 2, len(data) // 2, data.index(b'"sig"') + 12):
        changed = bytearray(data)
        changed[i] ^= 0x01
        (tmp_path / "t.json").write_bytes(bytes(changed))
        with pytest.raises(ReportError):
            verify_report(tmp_path / "t.json")


def test_ssh_commissioning_end_to_end_through_the_cli(home: Home, releases, key, lenient, tmp_path: Path) -> None:
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=1, serial=0, profile=lenient) as sim:
        name, root = sim.devices[0].name, Path(sim.devices[0].root)
        site = manifest(tmp_path, key, {name: "1.0.0"})
        ans = tmp_path / "answers.json"
        ans.write_text(json.dumps({"sign-off": {"answer": True, "note": "commissioned for line 3"}}))
        rc, doc, out, err = cli("checklist", "run", "commissioning", name, "--release", str(releases["v1"]),
                                "--manifest", str(site), "--key", str(key.public), "--answers", str(ans), "--json")
        assert rc == 0 and doc["status"] == "passed", (out, err)
        assert [s["status"] for s in doc["steps"]] == ["passed"] * 10
        assert active(root) == "1.0.0"
        assert journal_count(home, name, "release.install") == 1 and journal_count(home, name, "bench.run") == 1

        # run again: the release is already active and committed, so it is not installed twice
        rc, _, out, err = cli("checklist", "run", "commissioning", name, "--release", str(releases["v1"]),
                                 "--manifest", str(site), "--key", str(key.public), "--answers", str(ans), "--json")
        assert rc == 0, (out, err)
        assert journal_count(home, name, "release.install") == 1

    report_dir = tmp_path / "out"
    rc, rep, out, err = cli("report", doc["run_id"], "--out", str(report_dir), "--json")
    assert rc == 0, err
    pub = operator_pub(home, tmp_path)
    rc, ver, out, err = cli("report", "verify", str(report_dir / "report.json"), "--key", str(pub), "--json")
    assert rc == 0 and ver["ok"] and ver["signer"] == rep["signer"] and ver["result"] == "passed", err
    rc, _, out, err = cli("report", "verify", str(report_dir / "report.json"))
    assert rc == 0 and rep["signer"] in out, err
    report = json.loads((report_dir / "report.json").read_text())
    assert report["device"]["host_key"] and report["bench"]["verdict"] in ("pass", "warn")
    assert report["versions"][0]["status"] == "ok" and len(report["versions"][0]["active_digest"]) == 64
    assert report["steps"][-1]["note"] == "commissioned for line 3"
    # signed by the operator, so a release key given as --key is not the signer
    rc, _, _, err = cli("report", "verify", str(report_dir / "report.json"), "--key", str(key.public))
    assert rc == 1 and "not by the key given" in err, err
    (report_dir / "report.json").write_bytes((report_dir / "report.json").read_bytes().replace(b"passed", b"passes", 1))
    rc, _, _, err = cli("report", "verify", str(report_dir / "report.json"))
    assert rc == 1 and "altered" in err, err


def test_a_restart_service_action_restarts_the_profiles_inference_service(
        home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "systemctl-calls"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\nexit 0\n')
    fake.chmod(0o755)
    monkeypatch.setenv("FIELDKIT_AGENT_SYSTEMCTL", str(fake))  # the local agent inherits it
    own = tmp_path / "restart.toml"
    own.write_text('name = "restart"\ntitle = "Restart the inference service"\n'
                   '[[steps]]\nid = "restart"\nkind = "action"\naction = "restart_service"\ntitle = "Restart"\n')
    root = tmp_path / "ipc"
    root.mkdir()
    add_device(home, "ipc-1", f"local:{root}", profile="x86-ipc")  # edge-inference.service
    run = start_run(home, get_checklist(str(own), home), "ipc-1")
    assert run.status == "passed", run.steps["restart"].message
    assert calls.read_text().split() == ["restart", "edge-inference.service"]
    assert journal_count(home, "ipc-1", "service.restart") == 1
    events = [json.loads(line)["event"] for line in
              (root / "var/lib/fieldkit/journal.jsonl").read_text().splitlines() if line.strip()]
    assert "service.restart" in events

    add_device(home, "plain-1", f"local:{root}")  # generic-linux: no inference service
    run = start_run(home, get_checklist(str(own), home), "plain-1")
    assert run.steps["restart"].status == "failed" and "no inference service" in run.steps["restart"].message
    assert run.status == "stopped"  # on_fail defaults to stop
