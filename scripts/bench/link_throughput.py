#!/usr/bin/env python3
"""Link throughput, side by side with the reference tools, in one run.

SSH: move the same N MB file (random bytes) to the same real OpenSSH sshd on 127.0.0.1
  (a) through fieldkit's message layer to the agent (``DeviceLink.upload``: hashed and fsynced
      on the device), and
  (b) with OpenSSH ``scp`` (default cipher, and ``-c aes128-ctr``, the cipher paramiko uses),
alternating A/B for several rounds; prints MB/s of each (median) and the ratio.

Serial: bulk transfer through the serial ARQ layer over a pty pair; reports wire efficiency
(payload bytes / bytes on the wire, both directions) with no errors and with 1 corrupted byte
in 100,000, and the reference: lrzsz ``sz``/``rz`` (ZMODEM) over the same kind of pty pair.

    python scripts/bench/link_throughput.py [--mb 200] [--rounds 3] [--serial-mb 4]

Needs /usr/sbin/sshd, scp, and (for the ZMODEM reference) sz/rz from lrzsz.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
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


def bench_ssh(mb: int, rounds: int, work: Path) -> dict:
    from sshd import Sshd

    from fieldkit.devices import open_session
    from fieldkit.link.sshauth import ensure_client_key
    from fieldkit.locations import Home

    home = Home(work / "home").ensure()
    os.environ["FIELDKIT_HOME"] = str(home.root)
    os.environ["FIELDKIT_SSH_CONFIG"] = str(work / "ssh_config")
    os.environ["FIELDKIT_USER_KNOWN_HOSTS"] = str(work / "user_known_hosts")
    (work / "ssh_config").write_text("")
    key = ensure_client_key(home)
    payload = work / "payload.bin"
    with open(payload, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    size = payload.stat().st_size
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    device_home = work / "device-home"
    dest_dir = work / "dest"
    dest_dir.mkdir()
    results: dict[str, list[float]] = {"fieldkit": [], "scp": [], "scp-aes128-ctr": []}
    with Sshd(work / "sshd", home=device_home) as sshd:
        sshd.authorize(Path(str(key) + ".pub"))
        home.known_hosts.write_text(sshd.known_hosts_line() + "\n")
        kh = work / "scp_known_hosts"
        kh.write_text(sshd.known_hosts_line() + "\n")
        target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
        scp_base = ["scp", "-q", "-B", "-i", str(key), "-P", str(sshd.port),
                    "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes"]
        link = open_session(target, home, timeout=30)
        try:
            for r in range(rounds):
                t0 = time.perf_counter()
                res = link.upload(payload, str(dest_dir / "fk.bin"), sha256=digest, timeout=600)
                results["fieldkit"].append(size / (time.perf_counter() - t0) / 1e6)
                assert res.sha256 == digest
                (dest_dir / "fk.bin").unlink()
                for name, extra in (("scp", []), ("scp-aes128-ctr", ["-c", "aes128-ctr"])):
                    t0 = time.perf_counter()
                    subprocess.run(scp_base + extra + [str(payload), f"{sshd.user}@127.0.0.1:{dest_dir}/scp.bin"],
                                   check=True, timeout=600)
                    results[name].append(size / (time.perf_counter() - t0) / 1e6)
                    (dest_dir / "scp.bin").unlink()
                print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in results.items()),
                      flush=True)
        finally:
            link.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    return {"mb": mb, "median_MBps": med,
            "ratio_vs_scp": med["fieldkit"] / med["scp"],
            "ratio_vs_scp_aes128ctr": med["fieldkit"] / med["scp-aes128-ctr"]}


def bench_serial(mb: int, error_rate: float) -> dict:
    from fieldkit.agent.arq import ArqLink
    from fieldkit.agent.streams import open_tty
    from fieldkit.sim.ptyrelay import FaultInjector, PtyRelay

    fault = None
    if error_rate:
        fault = FaultInjector(drop_rate=error_rate / 3, flip_rate=error_rate / 3, insert_rate=error_rate / 3, seed=7)
    data = os.urandom(mb << 20)
    with PtyRelay(fault=fault) as relay:
        server = ArqLink(open_tty(relay.device_path, 115200), name="device")
        client = ArqLink(open_tty(relay.laptop_path, 115200), name="laptop")
        got = bytearray()

        def sink() -> None:
            sess = server.accept(timeout=10)
            while len(got) < len(data):
                chunk = sess.read(1 << 16)
                if not chunk:
                    break
                got.extend(chunk)

        t = threading.Thread(target=sink)
        t.start()
        session = client.connect(timeout=10)
        t0 = time.perf_counter()
        view = memoryview(data)
        for off in range(0, len(data), 1 << 16):
            session.write(view[off:off + (1 << 16)])
        t.join(300)
        dt = time.perf_counter() - t0
        ok = bytes(got) == data
        cs, ss = dict(client.stats), dict(server.stats)
        client.close()
        server.close()
    wire = cs["wire_bytes_out"] + ss["wire_bytes_out"]
    return {"mb": mb, "error_rate": error_rate, "intact": ok, "seconds": dt,
            "efficiency_forward": len(data) / cs["wire_bytes_out"],
            "efficiency_both_directions": len(data) / wire,
            "retransmits": cs.get("retransmits"), "crc_errors": ss.get("crc_errors"),
            "bad_frames": ss.get("bad_frames"),
            "line_time_at_115200_s": wire * 10 / 115200}


def bench_zmodem(mb: int, work: Path) -> dict | None:
    """lrzsz ZMODEM over a socat pty pair: wire bytes per payload byte (the reference)."""
    if not (shutil.which("sz") and shutil.which("rz") and shutil.which("socat")):
        return None
    src = work / "zm.bin"
    src.write_bytes(os.urandom(mb << 20))
    out_dir = work / "zm-out"
    out_dir.mkdir(exist_ok=True)
    # socat relays between the two programs and logs byte counts with -lu? Count with a tee file.
    wire = work / "zm.wire"
    cmd = (f"socat -b 65536 EXEC:'sz -q -b {src}',pty,raw,echo=0 "
           f"SYSTEM:'tee -a {wire} | (cd {out_dir} && rz -q -b -y) | tee -a {wire}',pty,raw,echo=0")
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", cmd], timeout=300, check=False, capture_output=True)
    dt = time.perf_counter() - t0
    got = out_dir / src.name
    if not got.exists() or got.read_bytes() != src.read_bytes():
        return {"mb": mb, "intact": False}
    wb = wire.stat().st_size
    return {"mb": mb, "intact": True, "seconds": dt, "efficiency_both_directions": (mb << 20) / wb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serial-mb", type=int, default=4)
    ap.add_argument("--skip-ssh", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fieldkit-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_ssh:
            print(f"SSH: {args.mb} MB to a real sshd on 127.0.0.1, {args.rounds} rounds (A/B alternating)")
            s = bench_ssh(args.mb, args.rounds, work)
            med = s["median_MBps"]
            print(f"  fieldkit message layer  {med['fieldkit']:7.1f} MB/s (median)")
            print(f"  scp (default cipher)    {med['scp']:7.1f} MB/s")
            print(f"  scp -c aes128-ctr       {med['scp-aes128-ctr']:7.1f} MB/s")
            print(f"  ratio fieldkit/scp = {s['ratio_vs_scp']:.2f}x, "
                  f"fieldkit/scp(aes128-ctr) = {s['ratio_vs_scp_aes128ctr']:.2f}x (target >= 0.8x)")
        print(f"\nSerial ARQ over a pty pair, {args.serial_mb} MB:")
        for rate in (0.0, 1e-5):
            r = bench_serial(args.serial_mb, rate)
            print(f"  error rate {rate:g}/byte: intact={r['intact']} efficiency forward "
                  f"{100 * r['efficiency_forward']:.2f} %, both directions {100 * r['efficiency_both_directions']:.2f} %, "
                  f"retransmits {r['retransmits']}, crc errors {r['crc_errors']}, bad frames {r['bad_frames']}; "
                  f"{r['seconds']:.1f} s on the pty, {r['line_time_at_115200_s']:.0f} s at 115200 baud")
        z = bench_zmodem(min(args.serial_mb, 4), work)
        if z:
            print(f"  reference lrzsz ZMODEM (sz|rz) on a pty pair: intact={z['intact']}"
                  + (f", efficiency both directions {100 * z['efficiency_both_directions']:.2f} %" if z.get("intact") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
