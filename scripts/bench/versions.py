#!/usr/bin/env python3
"""``fieldkit versions --all`` on N simulated devices against the same command on one of them.

The devices are :class:`fieldkit.sim.Simulation` devices (paramiko SSH servers on 127.0.0.1 and
serial agents on pty pairs), each with the same signed release installed by the real install path
and a signed site manifest that expects it (digest included), so every device is ``ok`` and every
run does the whole job: connect, witness the journal, list models, re-hash the installed files on
the device, compare, journal. The CLI runs as a subprocess, as a technician runs it; the runs
alternate (one device, then all) for R rounds after an untimed warm-up, and the table shows medians.

Measured: wall time of ``--all`` over wall time of one device (target <= 3x on a 2-core machine,
where the simulated devices share the cores with fieldkit), and fieldkit's own CPU seconds per
device (user + system of the CLI process, from ``wait4``: the simulated devices' agents are not in it).

    python scripts/bench/versions.py [--devices 12] [--serial 2] [--rounds 5] [--tiny] [--json]

``--tiny`` (2 devices, one of them serial, 1 round) finishes in well under a minute; the test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _cpu_here() -> float:
    """CPU seconds of this process (the simulated SSH servers run in it) and its reaped children
    (the agents the simulated devices start, and the fieldkit CLI runs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_cli(args: list[str], out: Path) -> tuple[int, float, float, dict]:
    """(exit code, wall s, CPU s of the fieldkit process, JSON document)."""
    with open(out, "wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "fieldkit", *args], stdout=fh, stderr=subprocess.PIPE,
                                cwd=str(ROOT))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    try:
        doc = json.loads(out.read_text())
    except ValueError:
        raise SystemExit(f"fieldkit {' '.join(args[:2])} printed no JSON (exit {proc.returncode}): {err[-2000:]}")
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=12, help="simulated devices in all (default 12)")
    ap.add_argument("--serial", type=int, default=2, help="how many of them are serial devices (default 2)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=None, help="pass --parallel N to fieldkit versions")
    ap.add_argument("--tiny", action="store_true", help="2 devices (1 serial), 1 round: a quick check that it runs")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.tiny:
        a.devices, a.serial, a.rounds = 2, 1, 1
    if not 1 <= a.devices or not 0 <= a.serial < a.devices:
        raise SystemExit("--devices must be >= 1 and --serial below it (the one-device run is an SSH device)")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _needs import require

    require(__file__, modules=("onnx",))  # the test models are built by scripts/make_models.py
    base = Path(tempfile.mkdtemp(prefix="fieldkit-bench-versions-"))
    os.environ["FIELDKIT_HOME"] = str(base / "home")
    os.environ.setdefault("FIELDKIT_SSH_CONFIG", str(base / "ssh_config"))
    (base / "ssh_config").write_text("")

    from models import model_paths

    from fieldkit.devices import open_session
    from fieldkit.install import install_release
    from fieldkit.journal import setup_operator
    from fieldkit.locations import Home
    from fieldkit.manifest import create_manifest
    from fieldkit.modelstore import add_anchor, read_public_key
    from fieldkit.release import create_release, keygen
    from fieldkit.sim import Simulation

    home = Home(base / "home").ensure()
    setup_operator(home, "bench")
    key = keygen(base / "rel.pem")
    rel = create_release(model_paths()["anomaly-tabular"], name="anomaly", version="1.0.0", security_version=1,
                         smoke_random=2, key_path=key.private, out_dir=base / "anomaly-1.0.0")
    src = base / "site.toml"
    src.write_text(f'[[expect]]\nprofile = "generic-linux"\nmodel = "anomaly"\nversion = "1.0.0"\n'
                   f'digest = "sha256:{rel.digest}"\n')
    manifest = base / "site.manifest.json"
    create_manifest(src, key.private, manifest)
    pem, fp = read_public_key(key.public)

    with Simulation(home, ssh=a.devices - a.serial, serial=a.serial, base_dir=base / "devices") as sim:
        names = [d.name for d in sim.devices]

        def setup(name: str) -> None:
            with open_session(name, home) as session:
                add_anchor(session, pem, fp)
                res = install_release(session, rel.directory)
                if res.result != "committed":
                    raise SystemExit(f"install on {name}: {res.result}: {res.message}")

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(setup, names))

        common = ["--manifest", str(manifest), "--key", str(key.public), "--json"]
        one_args = ["versions", names[0], *common]
        all_args = ["versions", "--all", *common] + ([] if a.parallel is None else ["--parallel", str(a.parallel)])
        out = base / "out.json"
        run_cli(one_args, out)  # warm-up: page cache, pyc files, agent caches
        run_cli(all_args, out)
        one_wall, all_wall, one_cpu, all_cpu, all_sim = [], [], [], [], []
        all_ok = True
        for r in range(a.rounds):
            order = [(one_args, one_wall, one_cpu), (all_args, all_wall, all_cpu)]
            if r % 2:
                order.reverse()
            for args, walls, cpus in order:
                before = _cpu_here()
                rc, wall, cpu, doc = run_cli(args, out)
                if args is all_args:  # everything but fieldkit: the simulated devices' side of the work
                    all_sim.append(_cpu_here() - before - cpu)
                all_ok &= rc == 0 and all(d["status"] == "ok" for d in doc["devices"])
                if args is all_args:
                    all_ok &= len(doc["devices"]) == len(names)
                walls.append(wall)
                cpus.append(cpu)

    result = {
        "devices": len(names), "ssh": a.devices - a.serial, "serial": a.serial, "rounds": a.rounds,
        "wall_one_s": round(statistics.median(one_wall), 3), "wall_all_s": round(statistics.median(all_wall), 3),
        "ratio": round(statistics.median(all_wall) / statistics.median(one_wall), 2),
        "cpu_one_s": round(statistics.median(one_cpu), 3), "cpu_all_s": round(statistics.median(all_cpu), 3),
        "cpu_s_per_device": round(statistics.median(all_cpu) / len(names), 3),
        "sim_cpu_s_per_device": round(statistics.median(all_sim) / len(names), 3),
        "all_ok": all_ok, "cpus": os.cpu_count(),
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"fieldkit versions: {len(names)} simulated devices ({result['ssh']} SSH, {a.serial} serial), "
              f"{a.rounds} rounds, {os.cpu_count()} CPUs; medians")
        print(f"  one device   wall {result['wall_one_s']:.2f} s   fieldkit CPU {result['cpu_one_s']:.2f} s")
        print(f"  --all        wall {result['wall_all_s']:.2f} s   fieldkit CPU {result['cpu_all_s']:.2f} s "
              f"({result['cpu_s_per_device']:.3f} s per device)")
        print(f"  the simulated devices' own CPU (SSH servers, agents) in --all: "
              f"{result['sim_cpu_s_per_device']:.3f} s per device, on the same {os.cpu_count()} cores")
        print(f"  ratio --all / one: {result['ratio']:.2f}x (target <= 3x); every device ok: {all_ok}")
    import shutil
    shutil.rmtree(base, ignore_errors=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
