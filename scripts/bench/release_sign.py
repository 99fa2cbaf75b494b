#!/usr/bin/env python3
"""Release signing: fieldkit against model_signing and openssl, in the same run on the same files.

A release directory with an N-MB model (random bytes: hashing does not care), release.json and a
small smoke file. Rounds alternate which side goes first; the table shows medians.

1. sign: ``fieldkit.oms.sign_directory`` vs the ``model_signing`` API (key signer), and the CLIs
   ``fieldkit release sign`` vs ``model_signing sign key`` (start-up included).
2. verify: ``fieldkit.release.verify_release`` vs the ``model_signing`` API (key verifier), and
   ``fieldkit release verify`` vs ``model_signing verify key``.
3. hashing: ``fieldkit.oms.hash_file`` vs ``openssl dgst -sha256`` over the same (cached) file.

    python scripts/bench/release_sign.py [--mb 200] [--rounds 5] [--tiny] [--json]

``--tiny`` (2 MB, 1 round) finishes in a few seconds; the test suite runs it.
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
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fieldkit import oms, release  # noqa: E402


def make_release(root: Path, mb: int) -> tuple[Path, Path, Path]:
    d = root / "bench-1.0.0"
    (d / "smoke").mkdir(parents=True)
    with open(d / "model.onnx", "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    (d / "smoke" / "inputs.npz").write_bytes(os.urandom(4096))
    (d / "release.json").write_text(json.dumps({"name": "bench", "version": "1.0.0", "security_version": 0,
                                                "model": "model.onnx", "smoke": None, "no_smoke": True}))
    pair = release.keygen(root / "rel.pem")
    return d, pair.private, pair.public


def exe(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed ({proc.returncode}): {proc.stderr[-500:]}")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="2 MB, 1 round: a quick check that it all runs")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.tiny:
        a.mb, a.rounds = 2, 1
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _needs import require

    require(__file__, modules=("model_signing",), programs=("model_signing", "openssl"))

    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
        have_ms = True
    except ImportError:
        have_ms = False
    ms_cli = exe("model_signing")
    openssl = shutil.which("openssl")
    fk = [sys.executable, "-m", "fieldkit"]

    root = Path(tempfile.mkdtemp(prefix="fieldkit-bench-release-"))
    env_home = root / "home"
    os.environ["FIELDKIT_HOME"] = str(env_home)
    try:
        d, key, pub = make_release(root, a.mb)
        sig = d / "model.sig"
        model = d / "model.onnx"
        size_mb = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e6
        oms.hash_file(model)  # page cache warm for everyone

        def ms_sign() -> None:
            (model_signing.signing.Config().use_elliptic_key_signer(private_key=key)
             .set_hashing_config(model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"]))
             .sign(d, sig))

        def ms_verify() -> None:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(d, sig)

        pairs: list[tuple[str, Callable[[], object], Callable[[], object] | None, float]] = [
            ("sign (API)", lambda: oms.sign_directory(d, key), ms_sign if have_ms else None, size_mb),
            ("verify (API)", lambda: release.verify_release(d, [pub]), ms_verify if have_ms else None, size_mb),
            ("sign (CLI)", lambda: run(fk + ["release", "sign", str(d), "--key", str(key)]),
             (lambda: run([ms_cli, "sign", "key", str(d), "--private_key", str(key), "--signature", str(sig)]))
             if ms_cli else None, size_mb),
            ("verify (CLI)", lambda: run(fk + ["release", "verify", str(d), "--key", str(pub)]),
             (lambda: run([ms_cli, "verify", "key", str(d), "--signature", str(sig), "--public_key", str(pub)]))
             if ms_cli else None, size_mb),
            ("sha256 of model", lambda: oms.hash_file(model),
             (lambda: run([openssl, "dgst", "-sha256", str(model)])) if openssl else None, model.stat().st_size / 1e6),
        ]
        refs = {"sign (API)": "model_signing API", "verify (API)": "model_signing API",
                "sign (CLI)": "model_signing sign key", "verify (CLI)": "model_signing verify key",
                "sha256 of model": "openssl dgst -sha256"}
        times: dict[str, tuple[list[float], list[float]]] = {p[0]: ([], []) for p in pairs}
        oms.sign_directory(d, key)
        for r in range(a.rounds):
            for name, ours, theirs, _ in pairs:
                fk_t, ref_t = times[name]
                if theirs is None:
                    fk_t.append(timed(ours))
                    continue
                if r % 2 == 0:
                    fk_t.append(timed(ours))
                    ref_t.append(timed(theirs))
                else:
                    ref_t.append(timed(theirs))
                    fk_t.append(timed(ours))
                if name.startswith("sign"):
                    oms.sign_directory(d, key)  # leave a fieldkit signature for the verify rows
        rows = []
        for name, _, theirs, mb in pairs:
            fk_t, ref_t = times[name]
            f = statistics.median(fk_t)
            ref = statistics.median(ref_t) if ref_t else None
            rows.append({"what": name, "mb": round(mb, 1), "fieldkit_s": round(f, 4), "fieldkit_mb_s": round(mb / f, 1),
                         "reference": refs[name] if theirs else None,
                         "reference_s": round(ref, 4) if ref is not None else None,
                         "reference_mb_s": round(mb / ref, 1) if ref else None,
                         "ratio": round(f / ref, 3) if ref else None})
    finally:
        shutil.rmtree(root, ignore_errors=True)

    if a.json:
        print(json.dumps({"mb": a.mb, "rounds": a.rounds, "cpus": os.cpu_count(), "rows": rows}))
        return 0
    print(f"release of {a.mb} MB random model, {a.rounds} round(s), median; ratio = fieldkit / reference "
          "(< 1: fieldkit faster)")
    head = f"{'':18} {'fieldkit':>10} {'MB/s':>8}   {'reference':<26} {'time':>9} {'MB/s':>8} {'ratio':>7}"
    print(head)
    print("-" * len(head))
    for row in rows:
        ref = row["reference"] or "(not installed)"
        rt = f"{row['reference_s']:.3f}s" if row["reference_s"] is not None else "-"
        rm = f"{row['reference_mb_s']:.0f}" if row["reference_mb_s"] is not None else "-"
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        print(f"{row['what']:18} {row['fieldkit_s']:>9.3f}s {row['fieldkit_mb_s']:>8.0f}   {ref:<26} {rt:>9} {rm:>8} "
              f"{ratio:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
