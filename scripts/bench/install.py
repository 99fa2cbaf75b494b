#!/usr/bin/env python3
"""Signed releases on a device: install, device-side verification, rollback, side by side with
what a careful technician does by hand, in one run.

1. Install over SSH to a real OpenSSH sshd on 127.0.0.1 (tests/sshd.py; the agent's device root
   is a temp directory through ``FIELDKIT_AGENT_ROOT``, set by the sshd for its sessions). Each
   round, for every method, the device is reset (the model's directory removed) and then gets a
   first install of v1.0.0 and an upgrade to v2.0.0. Methods, in an order that rotates round by
   round:

   * ``fieldkit``          ``open_session`` + ``install_release`` + close (connect, verify on the
                            laptop, transfer, the device verifies its copy, activate, smoke test, commit);
   * ``fieldkit-no-smoke`` the same with ``no_smoke=True`` (like for like with the manual path,
                            which runs no model);
   * ``fieldkit-cli``      ``python -m fieldkit install DEVICE DIR --yes --json`` (start-up included);
   * ``manual``            ``scp -r DIR`` to the device, then one ``ssh`` running
                            ``model_signing verify key DIR --signature DIR/model.sig --public_key PUB
                            && ln -sfn VERSION current`` on the device.

2. Device-side verification of the installed release: ``fieldkit.agent.omsverify.check_files``
   (scan + sha256 of every signed file, what the agent does when placing and activating) against
   ``openssl dgst -sha256`` over the same files (one process; its start-up on an empty file is
   measured too), MB/s and ratio; and one signature check (``load_public_pem`` + ``check_signature``)
   with the pure-Python ``ecdsa`` backend the agent zipapp carries, against ``cryptography``.

3. Rollback on a simulated SSH device (``fieldkit.sim.Simulation``): ``rollback_model`` from its
   call to the previous version active, smoke-tested and committed (and the same with the session
   opened, as ``fieldkit rollback`` does).

    python scripts/bench/install.py [--rounds 5] [--tiny]

``--tiny``: the small anomaly-tabular model, 1 round; every path runs (the test suite uses it).
The MobileNetV2-like fp32 model otherwise (scripts/make_models.py). The last line printed is a
one-line JSON summary. Needs /usr/sbin/sshd, ssh, scp, openssl and model_signing (the venv's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MODEL_NAME = "benchmodel"
DEVICE = "bench-sshd"
PROFILE = "bench-sshd"
METHODS = ("fieldkit", "fieldkit-no-smoke", "fieldkit-cli", "manual")
TARGETS = {"install_ratio_max": 1.0, "verify_ratio_min": 0.8, "ecdsa_ms_max": 50.0}


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def spread(xs: list[float]) -> tuple[float, float] | None:
    return (min(xs), max(xs)) if xs else None


def exe(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed")
    return found


def run(cmd: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-1500:]}")
    return proc


# ---- set-up ---------------------------------------------------------------------------------------
def setup_home(work: Path) -> Any:
    from fieldkit.journal import setup_operator
    from fieldkit.locations import Home

    home_dir = work / "home"
    os.environ["FIELDKIT_HOME"] = str(home_dir)
    os.environ["FIELDKIT_SSH_CONFIG"] = str(work / "ssh_config")
    os.environ["FIELDKIT_USER_KNOWN_HOSTS"] = str(work / "user_known_hosts")
    os.environ.pop("SSH_AUTH_SOCK", None)
    (work / "ssh_config").write_text("")
    home = Home(home_dir).ensure()
    setup_operator(home, "bench")
    return home


def make_releases(work: Path, model_name: str) -> tuple[Any, dict[str, Path], float]:
    from fieldkit.release import create_release, keygen

    models = work / "models"
    run([sys.executable, str(ROOT / "scripts" / "make_models.py"), str(models), "--only", model_name])
    (work / "keys").mkdir()
    key = keygen(work / "keys" / "rel.pem")
    rels = {}
    for v in ("1.0.0", "2.0.0"):
        rels[v] = work / "releases" / f"{MODEL_NAME}-{v}"
        create_release(models / f"{model_name}.onnx", name=MODEL_NAME, version=v, security_version=1,
                       smoke_random=1, key_path=key.private, out_dir=rels[v])
    size = sum(f.stat().st_size for f in rels["1.0.0"].rglob("*") if f.is_file())
    return key, rels, size


def bench_sshd_class() -> type:
    from sshd import Sshd

    class AgentRootSshd(Sshd):
        """tests/sshd.py's Sshd, whose sessions also get FIELDKIT_AGENT_ROOT (the device root)."""

        def __init__(self, workdir: Path, *, home: Path, agent_root: Path) -> None:
            super().__init__(workdir, home=home, log_level="ERROR")
            self.agent_root = agent_root

        def _write_config(self) -> None:
            super()._write_config()
            text = self.config_path.read_text()
            line = f"SetEnv HOME={self.home}"
            assert line in text
            self.config_path.write_text(text.replace(line, f"{line} FIELDKIT_AGENT_ROOT={self.agent_root}"))
            run([os.environ.get("FIELDKIT_TEST_SSHD", "/usr/sbin/sshd"), "-t", "-f", str(self.config_path)])

    return AgentRootSshd


# ---- 1. install over SSH ------------------------------------------------------------------------
def bench_install(home: Any, work: Path, key: Any, rels: dict[str, Path], size: int, rounds: int) -> dict:
    from sshd import unavailable_reason

    from fieldkit.devices import open_session
    from fieldkit.install import install_release
    from fieldkit.inventory import add_device
    from fieldkit.link.sshauth import ensure_client_key
    from fieldkit.sim import make_device_root

    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"real sshd unavailable: {reason}")
    client_key = ensure_client_key(home)
    device = make_device_root(work / "device")
    fk_models = device / "var/lib/fieldkit/models"
    fk_staging = device / "var/lib/fieldkit/staging"
    manual = device / "manual"
    (manual / "models").mkdir(parents=True)
    shutil.copy(key.public, manual / "release.pub.pem")  # like `fieldkit anchors add`: once, untimed
    home.profiles_dir.mkdir(parents=True, exist_ok=True)
    # The machine's /usr/bin/python3 has no onnxruntime: the profile names the interpreter that has.
    (home.profiles_dir / f"{PROFILE}.toml").write_text(
        f'name = "{PROFILE}"\ndescription = "bench: a real sshd on 127.0.0.1"\n'
        f'[transport]\npython = ["{sys.executable}"]\n')
    ms_cli = exe("model_signing")
    times: dict[str, dict[str, list[float]]] = {m: {"first": [], "reinstall": []} for m in METHODS}
    stages: dict[str, list[float]] = {}
    manual_parts: dict[str, list[float]] = {"scp": [], "ssh verify + ln": []}
    Sshd = bench_sshd_class()
    with Sshd(work / "sshd", home=work / "device-home", agent_root=device) as sshd:
        sshd.authorize(Path(str(client_key) + ".pub"))
        home.known_hosts.write_text(sshd.known_hosts_line() + "\n")
        kh = work / "scp_known_hosts"
        kh.write_text(sshd.known_hosts_line() + "\n")
        target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
        add_device(home, DEVICE, target, profile=PROFILE)
        ssh_opts = ["-i", str(client_key), "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes"]
        login = f"{sshd.user}@127.0.0.1"
        with open_session(DEVICE, home) as s:  # pushes the agent once (untimed) and trusts the key
            s.call("anchors_add", {"pem": key.public.read_text()})
            assert s.agent["capabilities"].get("onnxruntime"), "the device python has no onnxruntime"

        def reset(method: str) -> None:
            if method == "manual":
                shutil.rmtree(manual / "models" / MODEL_NAME, ignore_errors=True)
                (manual / "models" / MODEL_NAME).mkdir()
            else:
                shutil.rmtree(fk_models / MODEL_NAME, ignore_errors=True)
                for p in fk_staging.iterdir():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()

        def fk_api(version: str, no_smoke: bool) -> None:
            t0 = time.perf_counter()
            with open_session(DEVICE, home) as s:
                t_open = time.perf_counter() - t0
                res = install_release(s, rels[version], no_smoke=no_smoke)
                t_close0 = time.perf_counter()
            t_close = time.perf_counter() - t_close0
            if res.result != "committed" or res.after != version:
                raise SystemExit(f"fieldkit install of {version} ended {res.result}: {res.message}")
            if not no_smoke:
                stages.setdefault("connect (open_session)", []).append(t_open)
                for st in res.stages:
                    stages.setdefault(st.name, []).append(st.seconds)
                stages.setdefault("close", []).append(t_close)

        def fk_cli(version: str) -> None:
            p = run([sys.executable, "-m", "fieldkit", "install", DEVICE, str(rels[version]), "--yes", "--json"])
            doc = json.loads(p.stdout)
            if doc["result"] != "committed":
                raise SystemExit(f"fieldkit install (CLI) of {version}: {doc['message']}")

        def by_hand(version: str) -> None:
            dest = manual / "models" / MODEL_NAME / version
            t0 = time.perf_counter()
            run(["scp", "-q", "-B", "-r", "-P", str(sshd.port)] + ssh_opts + [str(rels[version]), f"{login}:{dest}"])
            t1 = time.perf_counter()
            remote = (f"{ms_cli} verify key {dest} --signature {dest}/model.sig "
                      f"--public_key {manual}/release.pub.pem && ln -sfn {version} {dest.parent}/current")
            run(["ssh", "-p", str(sshd.port)] + ssh_opts + [login, remote])
            t2 = time.perf_counter()
            manual_parts["scp"].append(t1 - t0)
            manual_parts["ssh verify + ln"].append(t2 - t1)
            assert os.readlink(dest.parent / "current") == version

        actions: dict[str, Callable[[str], None]] = {
            "fieldkit": lambda v: fk_api(v, False),
            "fieldkit-no-smoke": lambda v: fk_api(v, True),
            "fieldkit-cli": fk_cli,
            "manual": by_hand,
        }
        for r in range(rounds):
            order = list(METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)])
            if r % 2:
                order.reverse()
            for m in order:
                reset(m)
                for kind, v in (("first", "1.0.0"), ("reinstall", "2.0.0")):
                    t0 = time.perf_counter()
                    actions[m](v)
                    times[m][kind].append(time.perf_counter() - t0)
            print(f"  round {r + 1}: " + ", ".join(
                f"{m} {times[m]['first'][-1]:.2f}+{times[m]['reinstall'][-1]:.2f} s" for m in METHODS), flush=True)
    installed = fk_models / MODEL_NAME / "2.0.0"
    out: dict[str, Any] = {"release_bytes": size, "rounds": rounds, "methods": {}, "installed_dir": str(installed)}
    for m in METHODS:
        per_round = [a + b for a, b in zip(times[m]["first"], times[m]["reinstall"])]
        out["methods"][m] = {"first_s": med(times[m]["first"]), "reinstall_s": med(times[m]["reinstall"]),
                             "per_round_s": med(per_round), "spread_s": spread(per_round),
                             "rounds_s": [round(x, 3) for x in per_round]}
    man = out["methods"]["manual"]["per_round_s"]
    for m in METHODS[:-1]:
        ratios = [a / b for a, b in zip(out["methods"][m]["rounds_s"], out["methods"]["manual"]["rounds_s"])]
        out["methods"][m]["ratio_vs_manual"] = out["methods"][m]["per_round_s"] / man
        out["methods"][m]["ratio_spread"] = spread(ratios)
    out["fieldkit_stages_s"] = {k: med(v) for k, v in stages.items()}
    out["manual_parts_s"] = {k: med(v) for k, v in manual_parts.items()}
    return out


# ---- 2. device-side verification ------------------------------------------------------------------
def bench_verify(installed: Path, pub_pem: str, reps: int, sig_reps: int) -> dict:
    from fieldkit.agent import omsverify

    label = "models/bench"
    raw = omsverify.read_sig_file(str(installed), label)
    crypto_key = omsverify.load_public_pem(pub_pem, backend="cryptography")
    statement = omsverify.check_signature(raw, [crypto_key], label + "/model.sig")
    files = [str(installed / n) for n in statement.names]
    nbytes = sum(os.path.getsize(f) for f in files)
    openssl = exe("openssl")
    empty = installed.parent / ".bench-empty"
    empty.write_bytes(b"")
    fk_t, ossl_t, ossl0_t = [], [], []

    def ours() -> None:
        t0 = time.perf_counter()
        omsverify.check_files(str(installed), label, statement)
        fk_t.append(time.perf_counter() - t0)

    def theirs() -> None:
        t0 = time.perf_counter()
        p = subprocess.run([openssl, "dgst", "-sha256"] + files, capture_output=True, text=True, check=True)
        ossl_t.append(time.perf_counter() - t0)
        assert p.stdout.count("=") == len(files)
        t0 = time.perf_counter()
        subprocess.run([openssl, "dgst", "-sha256", str(empty)], capture_output=True, check=True)
        ossl0_t.append(time.perf_counter() - t0)

    ours()  # page cache warm for both (the files were just installed: they are)
    fk_t.clear()
    for r in range(reps):
        for fn in ((ours, theirs) if r % 2 == 0 else (theirs, ours)):
            fn()
    empty.unlink()
    fk, ossl, ossl0 = med(fk_t), med(ossl_t), med(ossl0_t)
    mb = nbytes / 1e6
    # openssl's own start-up, taken off its time; meaningless when it is most of the time (a tiny release)
    ossl_net = ossl - ossl0 if ossl - ossl0 >= ossl0 else None

    # one signature check, as the agent does it per request: load the anchor, parse, verify
    sig: dict[str, dict[str, float]] = {}
    for backend in ("ecdsa", "cryptography"):
        ts = []
        for _ in range(sig_reps + 1):
            t0 = time.perf_counter()
            k = omsverify.load_public_pem(pub_pem, backend=backend)
            st = omsverify.check_signature(raw, [k], label + "/model.sig")
            ts.append(time.perf_counter() - t0)
            assert k.backend == backend and st.digest == statement.digest
        sig[backend] = {"first_ms": ts[0] * 1e3, "median_ms": med(ts[1:]) * 1e3, "max_ms": max(ts[1:]) * 1e3}
    # the agent's switch: FIELDKIT_AGENT_NO_CRYPTOGRAPHY=1 makes backend_name() answer ecdsa
    old = os.environ.get(omsverify.NO_CRYPTOGRAPHY_ENV)
    os.environ[omsverify.NO_CRYPTOGRAPHY_ENV] = "1"
    try:
        forced = omsverify.backend_name()
    finally:
        if old is None:
            os.environ.pop(omsverify.NO_CRYPTOGRAPHY_ENV, None)
        else:
            os.environ[omsverify.NO_CRYPTOGRAPHY_ENV] = old
    assert forced == "ecdsa", forced
    return {"files": len(files), "bytes": nbytes, "reps": reps,
            "fieldkit_s": fk, "fieldkit_MBps": mb / fk, "fieldkit_spread_s": spread(fk_t),
            "openssl_s": ossl, "openssl_MBps": mb / ossl, "openssl_spread_s": spread(ossl_t),
            "openssl_startup_s": ossl0, "openssl_net_MBps": mb / ossl_net if ossl_net else None,
            "ratio": ossl / fk, "ratio_net": ossl_net / fk if ossl_net else None, "signature": sig}


# ---- 3. rollback on a simulated device ------------------------------------------------------------
def bench_rollback(home: Any, key: Any, rels: dict[str, Path], n: int) -> dict:
    from fieldkit.devices import open_session
    from fieldkit.install import install_release, rollback_model
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=1, serial=0, prefix="bench") as sim:
        name = sim.devices[0].name
        root = Path(sim.devices[0].root)
        with open_session(name, home) as s:
            s.call("anchors_add", {"pem": key.public.read_text()})
            for v in ("1.0.0", "2.0.0"):
                res = install_release(s, rels[v])
                assert res.result == "committed", res.message
        calls, totals, smoke, opens = [], [], [], []
        active = "2.0.0"
        for _ in range(n):
            expect = "1.0.0" if active == "2.0.0" else "2.0.0"
            t0 = time.perf_counter()
            with open_session(name, home) as s:
                t1 = time.perf_counter()
                res = rollback_model(s, MODEL_NAME)
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            if res.result != "committed" or res.after != expect:
                raise SystemExit(f"rollback ended {res.result} at {res.after}: {res.message}")
            cur = os.readlink(root / "var/lib/fieldkit/models" / MODEL_NAME / "current")
            assert cur == expect, cur
            active = expect
            opens.append(t1 - t0)
            calls.append(t2 - t1)
            totals.append(t3 - t0)
            smoke.append(next(st.seconds for st in res.stages if st.name == "smoke"))
    return {"n": n, "rollback_call_s": med(calls), "spread_s": spread(calls), "with_connect_s": med(totals),
            "connect_s": med(opens), "smoke_stage_s": med(smoke)}


# ---- report ---------------------------------------------------------------------------------------
def report(model: str, inst: dict, ver: dict, rb: dict, rounds: int) -> dict:
    print(f"\n1. install over SSH to a real sshd on 127.0.0.1, {model} release "
          f"({inst['release_bytes'] / 1e6:.2f} MB), {rounds} round(s) of first install + upgrade, median")
    head = f"  {'method':<20} {'first':>8} {'upgrade':>8} {'round':>8} {'spread':>15} {'vs manual':>10}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for m in METHODS:
        d = inst["methods"][m]
        lo, hi = d["spread_s"]
        ratio = f"{d['ratio_vs_manual']:.2f}x" if "ratio_vs_manual" in d else "-"
        print(f"  {m:<20} {d['first_s']:>7.2f}s {d['reinstall_s']:>7.2f}s {d['per_round_s']:>7.2f}s "
              f"{f'{lo:.2f}-{hi:.2f}s':>15} {ratio:>10}")
    print("  fieldkit: connect + verify + transfer + device verify/place + activate + smoke + commit; "
          "manual: scp -r + ssh 'model_signing verify key ... && ln -sfn' (no smoke test: compare with "
          "fieldkit-no-smoke for like for like). Target <= 1.0x.")
    print("  fieldkit stages (median of each install with smoke): " + ", ".join(
        f"{k} {v * 1e3:.0f} ms" for k, v in inst["fieldkit_stages_s"].items()))
    print("  manual parts (median): " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in inst["manual_parts_s"].items()))

    print(f"\n2. device-side verification of the installed release ({ver['files']} files, "
          f"{ver['bytes'] / 1e6:.2f} MB), {ver['reps']} alternating reps, median")
    print(f"  omsverify.check_files      {ver['fieldkit_s'] * 1e3:8.1f} ms {ver['fieldkit_MBps']:8.0f} MB/s")
    net = ver["openssl_net_MBps"]
    print(f"  openssl dgst -sha256       {ver['openssl_s'] * 1e3:8.1f} ms {ver['openssl_MBps']:8.0f} MB/s "
          f"(its start-up {ver['openssl_startup_s'] * 1e3:.1f} ms; "
          + (f"without it {net:.0f} MB/s)" if net else "most of its time: no start-up-free figure)"))
    print(f"  ratio fieldkit/openssl MB/s = {ver['ratio']:.2f}x"
          + (f", against openssl without its start-up {ver['ratio_net']:.2f}x" if ver["ratio_net"] else "")
          + f" (target >= {TARGETS['verify_ratio_min']}x)")
    for b, d in ver["signature"].items():
        print(f"  signature check ({b:<12}) median {d['median_ms']:6.2f} ms, max {d['max_ms']:6.2f} ms, "
              f"first in the process {d['first_ms']:6.1f} ms")
    print(f"  (target: ecdsa <= {TARGETS['ecdsa_ms_max']:.0f} ms)")

    print(f"\n3. rollback on a simulated SSH device, {rb['n']} rollbacks, median")
    print(f"  rollback_model call (activate + smoke + commit) {rb['rollback_call_s'] * 1e3:7.0f} ms "
          f"(spread {rb['spread_s'][0] * 1e3:.0f}-{rb['spread_s'][1] * 1e3:.0f} ms; smoke stage "
          f"{rb['smoke_stage_s'] * 1e3:.0f} ms)")
    print(f"  with the session opened first (as `fieldkit rollback`)  {rb['with_connect_s'] * 1e3:7.0f} ms "
          f"(connect {rb['connect_s'] * 1e3:.0f} ms)")

    def r3(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, 4)
        if isinstance(x, dict):
            return {k: r3(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [r3(v) for v in x]
        return x

    summary = {
        "model": model, "rounds": rounds, "cpus": os.cpu_count(),
        "install": {m: {k: v for k, v in d.items() if k != "rounds_s"} for m, d in inst["methods"].items()},
        "install_ratio": inst["methods"]["fieldkit"]["ratio_vs_manual"],
        "install_ratio_no_smoke": inst["methods"]["fieldkit-no-smoke"]["ratio_vs_manual"],
        "install_stages_s": inst["fieldkit_stages_s"], "manual_parts_s": inst["manual_parts_s"],
        "verify": {k: v for k, v in ver.items() if k != "signature"},
        "verify_ratio": ver["ratio"], "ecdsa_ms": ver["signature"]["ecdsa"]["median_ms"],
        "cryptography_ms": ver["signature"]["cryptography"]["median_ms"],
        "rollback": rb, "targets": TARGETS,
    }
    return r3(summary)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="anomaly-tabular model, 1 round: a quick check that all runs")
    ap.add_argument("--json", action="store_true", help="accepted for the suite's convention: the last line "
                    "printed is always the one-line JSON summary")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _needs import require

    require(__file__, modules=("onnx", "model_signing"), programs=("sshd", "ssh", "scp", "openssl", "model_signing"))
    model = "anomaly-tabular" if a.tiny else "mobilenetv2-like"
    rounds = 1 if a.tiny else max(1, a.rounds)
    work = Path(tempfile.mkdtemp(prefix="fieldkit-bench-install-"))
    try:
        home = setup_home(work)
        key, rels, size = make_releases(work, model)
        print(f"install bench: {model}, {rounds} round(s), {os.cpu_count()} CPUs", flush=True)
        inst = bench_install(home, work, key, rels, size, rounds)
        ver = bench_verify(Path(inst["installed_dir"]), key.public.read_text(),
                           reps=3 if a.tiny else max(9, 2 * rounds), sig_reps=3 if a.tiny else 21)
        rb = bench_rollback(home, key, rels, n=2 if a.tiny else max(5, rounds))
        summary = report(model, inst, ver, rb, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
