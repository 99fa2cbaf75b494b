#!/usr/bin/env python3
"""A staged rollout of one signed release to N simulated devices against the same installs one by one.

The devices are :class:`fieldkit.sim.Simulation` devices (paramiko SSH servers on 127.0.0.1 and serial
agents on pty pairs, the real agent on real files) that trust the release key. Each run starts from
devices without the model (its directory and the staging area are removed before every run), so
every run does the whole job on every device: connect (agent push check, handshake, journal
witness), verify, transfer, the device verifies and places its copy, activate, onnxruntime smoke
test, commit, journal. Two ways, alternating round by round after an untimed warm-up of each:

* ``rollout``     one ``fieldkit install --all DIR --yes --json`` (canary 1, then ``--parallel`` at once);
* ``sequential``  ``fieldkit install DEVICE DIR --yes --json`` for each device, one after the other
                  (what a technician does without the rollout).

Both run the CLI as a subprocess, start-up included. Measured: wall time of each (medians) and the
ratio rollout / sequential.

    python scripts/bench/rollout.py [--devices 4] [--serial 1] [--rounds 3] [--parallel 4] [--tiny] [--json]

``--tiny`` (4 devices, one serial, 1 round, no warm-up) is run by the test suite. With ``--json``
the last line printed is a one-line JSON summary.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def run_cli(args: list[str]) -> tuple[int, float, dict]:
    """(exit code, wall s, JSON document) of one ``python -m fieldkit`` run."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fieldkit", *args], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=900)
    wall = time.perf_counter() - t0
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"fieldkit {' '.join(args[:3])} printed no JSON (exit {proc.returncode}): "
                         f"{proc.stderr[-2000:]}") from None
    return proc.returncode, wall, doc


def reset(roots: list[Path], model: str) -> None:
    """Devices as before the first install of ``model``: no model directory, an empty staging area."""
    for root in roots:
        shutil.rmtree(root / "var/lib/fieldkit/models" / model, ignore_errors=True)
        staging = root / "var/lib/fieldkit/staging"
        for p in staging.iterdir() if staging.is_dir() else ():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=4, help="simulated devices in all (default 4)")
    ap.add_argument("--serial", type=int, default=1, help="how many of them are serial devices (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4, help="--parallel of the rollout (default 4)")
    ap.add_argument("--tiny", action="store_true", help="4 devices (1 serial), 1 round, no warm-up")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.tiny:
        a.devices, a.serial, a.rounds = 4, 1, 1
    if a.devices < 2 or not 0 <= a.serial < a.devices:
        raise SystemExit("--devices must be >= 2 and --serial below it")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _needs import require

    require(__file__, modules=("onnx",))  # the test models are built by scripts/make_models.py
    base = Path(tempfile.mkdtemp(prefix="fieldkit-bench-rollout-"))
    os.environ["FIELDKIT_HOME"] = str(base / "home")
    os.environ.setdefault("FIELDKIT_SSH_CONFIG", str(base / "ssh_config"))
    (base / "ssh_config").write_text("")

    from models import model_paths

    from fieldkit.devices import open_session
    from fieldkit.journal import setup_operator
    from fieldkit.locations import Home
    from fieldkit.modelstore import add_anchor, read_public_key
    from fieldkit.release import create_release, keygen
    from fieldkit.sim import Simulation

    home = Home(base / "home").ensure()
    setup_operator(home, "bench")
    key = keygen(base / "rel.pem")
    rel = create_release(model_paths()["anomaly-tabular"], name="anomaly", version="1.0.0", security_version=1,
                         smoke_random=2, key_path=key.private, out_dir=base / "anomaly-1.0.0")
    pem, fp = read_public_key(key.public)
    release = str(rel.directory)

    walls: dict[str, list[float]] = {"rollout": [], "sequential": []}
    all_ok = True
    try:
        with Simulation(home, ssh=a.devices - a.serial, serial=a.serial, base_dir=base / "devices") as sim:
            names = [d.name for d in sim.devices]
            roots = [Path(d.root) for d in sim.devices]
            for name in names:
                with open_session(name, home) as session:
                    add_anchor(session, pem, fp)

            def rollout() -> tuple[bool, float]:
                rc, wall, doc = run_cli(["install", "--all", release, "--parallel", str(a.parallel), "--yes",
                                         "--json"])
                ok = rc == 0 and [d["result"] for d in doc["devices"]] == ["committed"] * len(names)
                return ok, wall

            def sequential() -> tuple[bool, float]:
                t0 = time.perf_counter()
                ok = True
                for name in names:
                    rc, _, doc = run_cli(["install", name, release, "--yes", "--json"])
                    ok &= rc == 0 and doc["result"] == "committed"
                return ok, time.perf_counter() - t0

            methods = {"rollout": rollout, "sequential": sequential}
            if not a.tiny:  # warm-up: page cache, pyc files, the agents' zipapp caches
                for fn in methods.values():
                    reset(roots, "anomaly")
                    fn()
            for r in range(a.rounds):
                order = list(methods) if r % 2 == 0 else list(methods)[::-1]
                for m in order:
                    reset(roots, "anomaly")
                    ok, wall = methods[m]()
                    all_ok &= ok
                    walls[m].append(wall)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    roll, seq = statistics.median(walls["rollout"]), statistics.median(walls["sequential"])
    result = {"devices": a.devices, "ssh": a.devices - a.serial, "serial": a.serial, "rounds": a.rounds,
              "parallel": a.parallel, "canary": 1, "rollout_s": round(roll, 3), "sequential_s": round(seq, 3),
              "ratio": round(roll / seq, 3), "rollout_runs_s": [round(x, 3) for x in walls["rollout"]],
              "sequential_runs_s": [round(x, 3) for x in walls["sequential"]], "all_committed": all_ok,
              "cpus": os.cpu_count()}
    if not a.json:
        print(f"rollout of one release to {a.devices} simulated devices ({result['ssh']} SSH, {a.serial} serial), "
              f"{a.rounds} round(s), {os.cpu_count()} CPUs; medians")
        print(f"  fieldkit install --all (canary 1, then --parallel {a.parallel})  {roll:.2f} s")
        print(f"  fieldkit install DEVICE, one by one                       {seq:.2f} s")
        print(f"  ratio rollout / one by one: {roll / seq:.2f}x; every install committed: {all_ok}")
    print(json.dumps(result))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
