#!/usr/bin/env python3
"""Link throughput, side by side with the reference tools, in one run.

SSH: move the same N MB file (random bytes) to the same real OpenSSH sshd on 127.0.0.1
  (a) through fieldkit's message layer to the agent (``DeviceLink.upload``: hashed and fsynced
      on the device), and
  (b) with OpenSSH ``scp`` (default cipher, and ``-c aes128-ctr``, the cipher paramiko uses),
alternating A/B for several rounds; prints MB/s of each (median) and the ratio.

Serial: the ARQ layer (``fieldkit.agent.arq``) and lrzsz ZMODEM (``sz`` | ``rz``) over the same
simulated cable (``fieldkit.sim.ptyrelay.PtyRelay``; faults seeded, RATE = probability per byte,
a third each dropped, flipped, inserted), each way:
  fieldkit         adaptive frame sizes (both ends announce them: this fieldkit and its agent)
  fieldkit-fixed   1 KiB frames (a laptop or agent without them: what every link did before)
  lrzsz            sz on the device's end, rz on the laptop's
1. wire efficiency of a bulk transfer = payload / bytes on the line (both directions, as the relay
   counts them): clean on unthrottled ptys (the relay buffers the whole file, so a receiver that
   falls behind loses nothing); at 1e-5 on a line throttled to 921600 baud (ZMODEM's error recovery
   needs a paced line), 4 MB each, about 45 s.
2. a health check (``fieldkit.health.check_device``: connect, operator authentication, journal
   witness, health, journal) of a simulated serial device at 115200 baud (``fieldkit.sim``):
   clean, 1e-3 and 3e-3, fieldkit and fieldkit-fixed alternating round by round after an untimed
   warm-up; median time and line bytes; ratio noisy / clean (target at 1e-3: <= 3x).

    python scripts/bench/link_throughput.py [--mb 200] [--rounds 3] [--serial-mb 4] [--noisy-mb 4]
                                            [--health-rounds 5] [--skip-ssh] [--json]
    python scripts/bench/link_throughput.py --tiny      (every part once, small; the suite runs it)

Needs /usr/sbin/sshd and scp (unless --skip-ssh), and sz/rz from lrzsz.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

NOISY_BPS = 92160.0  # 921600 baud, 8N1
MODES = ("fieldkit", "fieldkit-fixed")


def make_home(work: Path):
    """A FIELDKIT_HOME with an operator identity, as `fieldkit init --operator` leaves it."""
    from fieldkit.journal import IdentityMissing, load_identity, setup_operator
    from fieldkit.locations import Home

    home = Home(work / "home").ensure()
    os.environ["FIELDKIT_HOME"] = str(home.root)
    os.environ["FIELDKIT_SSH_CONFIG"] = str(work / "ssh_config")
    os.environ["FIELDKIT_USER_KNOWN_HOSTS"] = str(work / "user_known_hosts")
    (work / "ssh_config").write_text("")
    try:
        load_identity(home)
    except IdentityMissing:
        setup_operator(home, "bench-technician")  # device operations refuse to run without one
    return home


# ---- SSH -------------------------------------------------------------------------------------------

def bench_ssh(mb: int, rounds: int, work: Path, home) -> dict:
    from sshd import Sshd

    from fieldkit.devices import open_session
    from fieldkit.link.sshauth import ensure_client_key

    key = ensure_client_key(home)
    payload = work / "payload.bin"
    with open(payload, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    size = payload.stat().st_size
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    dest_dir = work / "dest"
    dest_dir.mkdir()
    results: dict[str, list[float]] = {"fieldkit": [], "scp": [], "scp-aes128-ctr": []}
    with Sshd(work / "sshd", home=work / "device-home") as sshd:
        sshd.authorize(Path(str(key) + ".pub"))
        home.known_hosts.write_text(sshd.known_hosts_line() + "\n")
        kh = work / "scp_known_hosts"
        kh.write_text(sshd.known_hosts_line() + "\n")
        target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
        scp_base = ["scp", "-q", "-B", "-i", str(key), "-P", str(sshd.port),
                    "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes"]
        with open_session(target, home, timeout=30) as session:
            link = session.link
            for r in range(rounds):
                t0 = time.perf_counter()
                res = link.upload(payload, str(dest_dir / "fk.bin"), sha256=digest, timeout=600)
                results["fieldkit"].append(size / (time.perf_counter() - t0) / 1e6)
                if res["sha256"] != digest:
                    raise SystemExit(f"fieldkit upload landed {res['sha256']}, expected {digest}")
                (dest_dir / "fk.bin").unlink()
                for name, extra in (("scp", []), ("scp-aes128-ctr", ["-c", "aes128-ctr"])):
                    t0 = time.perf_counter()
                    subprocess.run(scp_base + extra + [str(payload), f"{sshd.user}@127.0.0.1:{dest_dir}/scp.bin"],
                                   check=True, timeout=600)
                    results[name].append(size / (time.perf_counter() - t0) / 1e6)
                    (dest_dir / "scp.bin").unlink()
                print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in results.items()),
                      flush=True)
    payload.unlink()
    med = {k: statistics.median(v) for k, v in results.items()}
    return {"mb": mb, "rounds": rounds, "median_MBps": med, "ratio_vs_scp": med["fieldkit"] / med["scp"],
            "ratio_vs_scp_aes128ctr": med["fieldkit"] / med["scp-aes128-ctr"]}


# ---- serial: bulk transfers over the relay ----------------------------------------------------------

def _fault(rate: float, seed: int):
    from fieldkit.sim.ptyrelay import FaultInjector

    return FaultInjector(rate / 3, rate / 3, rate / 3, seed=seed) if rate else None


def bulk_fieldkit(data: bytes, rate: float, bps: float | None, adaptive: bool, seed: int = 7) -> dict:
    """The laptop writes ``data`` through an ARQ session; the device reads it."""
    from fieldkit.agent.arq import ArqLink
    from fieldkit.agent.streams import open_tty
    from fieldkit.sim.ptyrelay import PtyRelay

    with PtyRelay(fault=_fault(rate, seed), bytes_per_second=bps, buffer_limit=2 * len(data) + (1 << 20)) as relay:
        server = ArqLink(open_tty(relay.device_path), name="device", adaptive=adaptive)
        client = ArqLink(open_tty(relay.laptop_path), name="laptop", adaptive=adaptive)
        h = hashlib.sha256()
        got = [0]

        def sink() -> None:
            sess = server.accept(timeout=10)
            while got[0] < len(data):
                chunk = sess.read(1 << 16, timeout=120)
                if not chunk:
                    break
                h.update(chunk)
                got[0] += len(chunk)

        t = threading.Thread(target=sink, daemon=True)
        t.start()
        session = client.connect(timeout=10)
        t0 = time.perf_counter()
        view = memoryview(data)
        for off in range(0, len(data), 1 << 16):
            session.write(view[off:off + (1 << 16)])
        t.join(600)
        dt = time.perf_counter() - t0
        frame = session.tx_payload
        client.close(linger=0)
        server.close(linger=0)
        st, cs = dict(relay.stats), dict(client.stats)
    intact = got[0] == len(data) and h.hexdigest() == hashlib.sha256(data).hexdigest()
    return _bulk_result(len(data), intact, dt, st, bps, retransmits=cs["retransmits"], frame_size_at_end=frame)


def bulk_lrzsz(data: bytes, rate: float, bps: float | None, work: Path, seed: int = 7) -> dict:
    """``sz`` on the device's end of the same kind of cable, ``rz`` on the laptop's; once more if
    the first attempt does not land the file (lrzsz now and then gives up at once on a fresh pty)."""
    first = _lrzsz_once(data, rate, bps, work, seed)
    if first["intact"]:
        return first
    again = _lrzsz_once(data, rate, bps, work, seed)
    again["first_attempt_failed"] = first.get("log", "")
    return again


def _lrzsz_once(data: bytes, rate: float, bps: float | None, work: Path, seed: int) -> dict:
    from fieldkit.sim.ptyrelay import PtyRelay

    src = work / "zm.bin"
    src.write_bytes(data)
    out_dir = work / "zm-out"
    out_dir.mkdir(exist_ok=True)
    landed = out_dir / src.name
    landed.unlink(missing_ok=True)
    timeout = 60 + 3 * len(data) / (bps or 100_000)
    # unthrottled, rz may fall behind sz: a buffer that holds the whole file keeps the relay from
    # dropping bytes (a real line paces the sender instead)
    with PtyRelay(fault=_fault(rate, seed), bytes_per_second=bps, buffer_limit=2 * len(data) + (1 << 20)) as relay:
        with open(relay.laptop_path, "r+b", buffering=0) as lap, open(relay.device_path, "r+b", buffering=0) as dev:
            t0 = time.perf_counter()
            log = open(work / "lrzsz.log", "w+b")
            rz = subprocess.Popen(["rz", "-b", "-y", "-q"], stdin=lap, stdout=lap, stderr=log, cwd=str(out_dir))
            sz = subprocess.Popen(["sz", "-b", "-q", str(src)], stdin=dev, stdout=dev, stderr=log)
            # done when both exit, or once the whole file has landed (their closing handshake
            # sometimes waits out a 30 s timeout on a pty: not part of the transfer)
            done_at = None
            while time.perf_counter() - t0 < timeout:
                if sz.poll() is not None and rz.poll() is not None:
                    done_at = time.perf_counter()
                    break
                if landed.exists() and landed.stat().st_size == len(data):
                    done_at = done_at or time.perf_counter()
                    if time.perf_counter() - done_at > 0.5:
                        break
                time.sleep(0.02)
            dt = (done_at or time.perf_counter()) - t0
            for p in (sz, rz):
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        st = dict(relay.stats)
    log.seek(0)
    said = log.read().decode(errors="replace").strip()[-300:]
    log.close()
    intact = landed.exists() and landed.read_bytes() == data
    src.unlink()
    return _bulk_result(len(data), intact, dt, st, bps, **({} if intact else {"log": said}))


def _bulk_result(n: int, intact: bool, seconds: float, st: dict, bps: float | None, **extra) -> dict:
    wire = st["to_laptop"] + st["to_device"]
    doc = {"bytes": n, "intact": intact, "seconds": round(seconds, 3), "wire_bytes": wire,
           "efficiency": n / wire if intact and wire else None, **extra}
    if bps and intact:
        doc["line_share"] = n / (seconds * bps)  # of the line rate, in time
    return doc


# ---- serial: a health check through a simulated device ------------------------------------------------

class _FixedFrames:
    """While active, the laptop's serial links announce no adaptive frames (an older fieldkit):
    then both ends keep to 1 KiB frames, as every link did before adaptive frame sizes."""

    def __enter__(self):
        import fieldkit.agent.arq as arq

        self.arq, self.orig = arq, arq.ArqLink

        class FixedArqLink(self.orig):
            def __init__(self, *a, **kw):
                kw["adaptive"] = False
                super().__init__(*a, **kw)

        arq.ArqLink = FixedArqLink  # fieldkit.link.connect imports it at each connect
        return self

    def __exit__(self, *exc):
        self.arq.ArqLink = self.orig


def bench_health(home, rates: tuple[float, ...], rounds: int, modes: tuple[str, ...], seed: int = 11) -> dict:
    from fieldkit.health import check_device
    from fieldkit.sim import Simulation

    out: dict = {}
    for rate in rates:
        runs: dict[str, list[tuple[float, int]]] = {m: [] for m in modes}
        failures: dict[str, list[str]] = {m: [] for m in modes}
        with Simulation(home, ssh=0, serial=1, prefix="bench", baud=115200, line_errors=rate,
                        line_seed=seed) as sim:
            name = sim.devices[0].name
            relay = sim.relays[name]
            for r in range(rounds + 1):  # round 0: the agent's first session, untimed
                order = modes if r % 2 == 0 else modes[::-1]
                for mode in order:
                    with _FixedFrames() if mode == "fieldkit-fixed" else _Nothing():
                        b0 = relay.stats["to_laptop"] + relay.stats["to_device"]
                        t0 = time.perf_counter()
                        report = check_device(name, home, sample_s=0.25, timeout=30)
                        dt = time.perf_counter() - t0
                        b1 = relay.stats["to_laptop"] + relay.stats["to_device"]
                    if report.error:  # a failed check counts, with the time it took to fail
                        failures[mode].append(report.error.splitlines()[0])
                    if r:
                        runs[mode].append((dt, b1 - b0))
            faults = dict(sim.faults[name].counts) if name in sim.faults else None
        out[str(rate)] = {m: {"median_s": statistics.median(t for t, _ in v),
                              "min_s": min(t for t, _ in v), "max_s": max(t for t, _ in v),
                              "median_wire_bytes": int(statistics.median(b for _, b in v)),
                              "runs_s": [round(t, 3) for t, _ in v], "failed": failures[m]}
                          for m, v in runs.items()}
        out[str(rate)]["faults"] = faults
        for m in modes:
            d = out[str(rate)][m]
            print(f"  line errors {rate:g}, {m:15s} {d['median_s']:5.2f} s (min {d['min_s']:.2f}, max "
                  f"{d['max_s']:.2f}), {d['median_wire_bytes']:7,} line bytes"
                  + (f"; {len(d['failed'])} of {rounds + 1} checks failed: {d['failed'][0]}" if d["failed"] else ""),
                  flush=True)
    clean = out[str(rates[0])]
    for rate in rates[1:]:
        for m in modes:
            out[str(rate)][m]["ratio_to_clean"] = out[str(rate)][m]["median_s"] / clean[m]["median_s"]
    return out


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


# ---- main ------------------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "failed" if x is None else f"{100 * x:6.2f} %"


def serial_section(args, work: Path, home) -> dict:
    summary: dict = {}
    clean_n = int(args.serial_mb * (1 << 20))
    noisy_n = int(args.noisy_mb * (1 << 20))
    print(f"\nSerial bulk, clean line (unthrottled ptys), {clean_n / (1 << 20):g} MB:", flush=True)
    data = os.urandom(clean_n)
    clean = {"fieldkit": bulk_fieldkit(data, 0.0, None, True),
             "fieldkit-fixed": bulk_fieldkit(data, 0.0, None, False),
             "lrzsz": bulk_lrzsz(data, 0.0, None, work)}
    for k, r in clean.items():
        print(f"  {k:15s} efficiency {_pct(r['efficiency'])}  intact={r['intact']}  {r['seconds']:.1f} s"
              + (f"  frames at the end {r['frame_size_at_end']} B" if "frame_size_at_end" in r else ""), flush=True)
    summary["clean"] = clean
    print(f"\nSerial bulk at 1e-5 line errors, 921600 baud, {noisy_n / (1 << 20):g} MB:", flush=True)
    data = os.urandom(noisy_n)
    noisy = {"fieldkit": bulk_fieldkit(data, 1e-5, NOISY_BPS, True),
             "fieldkit-fixed": bulk_fieldkit(data, 1e-5, NOISY_BPS, False)}
    if not args.tiny:  # rz waits out its timeouts on a short noisy transfer: half a minute, nothing learnt
        noisy["lrzsz"] = bulk_lrzsz(data, 1e-5, NOISY_BPS, work)
    for k, r in noisy.items():
        share = f"{100 * r['line_share']:.1f} % of the line rate" if r.get("line_share") else "-"
        print(f"  {k:15s} efficiency {_pct(r['efficiency'])}  intact={r['intact']}  {r['seconds']:.1f} s  {share}",
              flush=True)
    summary["noisy_1e-5"] = noisy
    print(f"\nHealth check of a simulated serial device at 115200 baud, median of {args.health_rounds}:", flush=True)
    summary["health"] = bench_health(home, tuple(args.health_rates), args.health_rounds, MODES)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200, help="SSH transfer size (MB)")
    ap.add_argument("--rounds", type=int, default=3, help="SSH rounds")
    ap.add_argument("--serial-mb", type=float, default=4, help="clean serial transfer size (MB)")
    ap.add_argument("--noisy-mb", type=float, default=4, help="serial transfer size at 1e-5 (MB, 45 s each at 921600 baud)")
    ap.add_argument("--health-rounds", type=int, default=5)
    ap.add_argument("--health-rates", type=float, nargs="+", default=[0.0, 1e-3, 3e-3], metavar="RATE",
                    help="line error rates of the health runs; the first is the reference (default 0 1e-3 3e-3)")
    ap.add_argument("--skip-ssh", action="store_true")
    ap.add_argument("--skip-serial", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="every part once on small inputs (seconds)")
    ap.add_argument("--json", action="store_true", help="end with a one-line JSON summary")
    args = ap.parse_args()
    if args.tiny:
        args.mb, args.rounds, args.serial_mb, args.noisy_mb = 2, 1, 0.25, 0.0625
        args.health_rounds, args.health_rates = 1, [0.0, 1e-3]
    from _needs import require

    require(__file__, programs=(() if args.skip_ssh else ("sshd", "scp")) + (() if args.skip_serial else ("sz", "rz")))
    out: dict = {"tiny": args.tiny}
    failed = False
    with tempfile.TemporaryDirectory(prefix="fieldkit-bench-link-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        if not args.skip_ssh:
            print(f"SSH: {args.mb} MB to a real sshd on 127.0.0.1, {args.rounds} rounds (A/B alternating)", flush=True)
            s = out["ssh"] = bench_ssh(args.mb, args.rounds, work, home)
            med = s["median_MBps"]
            print(f"  fieldkit message layer  {med['fieldkit']:7.1f} MB/s (median)")
            print(f"  scp (default cipher)    {med['scp']:7.1f} MB/s")
            print(f"  scp -c aes128-ctr       {med['scp-aes128-ctr']:7.1f} MB/s")
            print(f"  ratio fieldkit/scp = {s['ratio_vs_scp']:.2f}x, "
                  f"fieldkit/scp(aes128-ctr) = {s['ratio_vs_scp_aes128ctr']:.2f}x (target >= 0.8x)", flush=True)
        if not args.skip_serial:
            ser = out["serial"] = serial_section(args, work, home)
            failed = not all(r["intact"] for part in ("clean", "noisy_1e-5") for k, r in ser[part].items()
                             if k != "lrzsz")
            failed = failed or any(ser["health"][str(rate)]["fieldkit"]["failed"] for rate in args.health_rates)
            fk, ref = ser["clean"]["fieldkit"], ser["clean"]["lrzsz"]
            print(f"\nTargets: clean >= 99 %: {_pct(fk['efficiency'])} (lrzsz {_pct(ref['efficiency'])}); "
                  f"1e-5 >= 95 %: {_pct(ser['noisy_1e-5']['fieldkit']['efficiency'])}; health at 1e-3 <= 3x clean: "
                  f"{ser['health'][str(1e-3)]['fieldkit']['ratio_to_clean']:.2f}x"
                  if str(1e-3) in ser["health"] else "")
    if args.json:
        print(json.dumps(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
