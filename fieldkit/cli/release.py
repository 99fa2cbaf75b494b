"""``fieldkit release keygen|create|sign|verify``: signed model releases (docs/releases.md).

``verify`` exits 0 when the release is valid and 1 when it is not (with ``--json``, the document
says why: ``error.code`` is the device's refusal code). Usage and key errors exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.locations import Home


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("release", help="make, sign and verify model releases (OpenSSF Model Signing)")
    s.set_defaults(handler=lambda args, home: _usage(s))
    actions = s.add_subparsers(dest="action", metavar="ACTION")

    a = actions.add_parser("keygen", help="make a release signing key (ECDSA P-256)")
    a.add_argument("--out", type=Path, required=True, metavar="KEY.pem",
                   help="private key to write (0600); the public key goes beside it as KEY.pub.pem")
    a.add_argument("--force", action="store_true", help="replace an existing key (the old one is lost)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_keygen)

    a = actions.add_parser("create", help="make a signed release directory from an ONNX model")
    a.add_argument("model", type=Path, metavar="MODEL.onnx")
    a.add_argument("--name", required=True, help="model name (the directory under models/ on the device)")
    a.add_argument("--version", required=True, help="semver MAJOR.MINOR.PATCH[-pre][+build]")
    a.add_argument("--security-version", type=int, default=0, metavar="S",
                   help="anti-rollback counter: devices never go below the highest they committed (default 0)")
    smoke = a.add_mutually_exclusive_group(required=True)
    smoke.add_argument("--smoke-inputs", type=Path, metavar="FILE.npz", help="smoke inputs by input name")
    smoke.add_argument("--smoke-random", type=int, metavar="K",
                       help="K seeded random samples from the model's input spec")
    smoke.add_argument("--no-smoke", action="store_true", help="make the release without a smoke set")
    a.add_argument("--atol", type=float, default=1e-4, help="smoke test absolute tolerance (default 1e-4)")
    a.add_argument("--rtol", type=float, default=1e-3, help="smoke test relative tolerance (default 1e-3)")
    a.add_argument("--budget-ms", type=float, default=None, help="smoke run latency budget on the device")
    a.add_argument("--seed", type=int, default=0, help="seed of --smoke-random (default 0)")
    a.add_argument("--notes", default="", help="free text stored in release.json")
    a.add_argument("--profile", action="append", default=[], metavar="P", dest="profiles",
                   help="a device profile the release is meant for (repeat for several)")
    a.add_argument("--key", type=Path, required=True, metavar="KEY.pem", help="release signing key")
    a.add_argument("--out", type=Path, required=True, metavar="DIR", help="release directory to make (new or empty)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_create)

    a = actions.add_parser("sign", help="(re-)sign a release directory after checking its release.json")
    a.add_argument("dir", type=Path, metavar="DIR")
    a.add_argument("--key", type=Path, required=True, metavar="KEY.pem")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_sign)

    a = actions.add_parser("verify", help="check a release's signature, files and release.json (exit 1 if not valid)")
    a.add_argument("dir", type=Path, metavar="DIR")
    a.add_argument("--key", type=Path, action="append", required=True, metavar="PUB.pem", dest="keys",
                   help="trusted public key (repeat for several, e.g. during a key rotation)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_verify)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _files(files: Any) -> list[dict]:
    return [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in files]


def _info_doc(info: Any) -> dict:
    m = info.manifest
    return {"dir": str(info.directory), "name": m.name, "version": m.version, "security_version": m.security_version,
            "digest": info.digest, "signer": info.signer, "hint": info.hint, "smoke": m.smoke is not None,
            "files": _files(info.files), "total_bytes": info.total_bytes}


def _print_info(verb: str, info: Any) -> None:
    m = info.manifest
    print(f"{verb} {info.directory}: {m.name} {m.version} (security_version {m.security_version})")
    print(f"  digest   sha256:{info.digest}")
    print(f"  signer   {info.signer}")
    print(f"  smoke    {'yes' if m.smoke else 'none (--no-smoke)'}")
    print(f"  files    {len(info.files)}, {_mb(info.total_bytes)}")


def cmd_keygen(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.release import keygen

    pair = keygen(args.out, force=args.force)
    if args.json:
        emit_json({"private": str(pair.private), "public": str(pair.public), "fingerprint": pair.fingerprint,
                   "hint": pair.hint})
    else:
        print(f"wrote {pair.private} (private, mode 0600: keep it off the devices)")
        print(f"wrote {pair.public} (public: add it to devices with `fieldkit anchors add`)")
        print(f"  fingerprint {pair.fingerprint}")
    return 0


def cmd_create(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.release import create_release

    info = create_release(args.model, name=args.name, version=args.version, security_version=args.security_version,
                          smoke_inputs=args.smoke_inputs, smoke_random=args.smoke_random, no_smoke=args.no_smoke,
                          key_path=args.key, out_dir=args.out, notes=args.notes, profiles=args.profiles,
                          atol=args.atol, rtol=args.rtol, budget_ms=args.budget_ms, seed=args.seed)
    if args.json:
        emit_json(_info_doc(info))
    else:
        _print_info("made", info)
    return 0


def cmd_sign(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.release import sign_release

    info = sign_release(args.dir, args.key)
    if args.json:
        emit_json(_info_doc(info))
    else:
        _print_info("signed", info)
    return 0


def cmd_verify(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.oms import VerificationFailed
    from fieldkit.release import verify_release

    try:
        v = verify_release(args.dir, args.keys)
    except VerificationFailed as exc:
        if not args.json:
            print(f"fieldkit: {args.dir} is not a valid release ({exc.code}): {exc}", file=sys.stderr)
            return exc.exit_code
        emit_json({"valid": False, "dir": str(args.dir), "name": None, "version": None, "security_version": None,
                   "digest": None, "signer": None, "hint": None, "files": [], "total_bytes": None,
                   "error": {"code": exc.code, "message": exc.message, "path": exc.path}})
        return exc.exit_code
    if args.json:
        emit_json({"valid": True, "dir": str(v.directory), "name": v.name, "version": v.version,
                   "security_version": v.security_version, "digest": v.digest, "signer": v.signer, "hint": v.hint,
                   "files": _files(v.files), "total_bytes": v.total_bytes, "error": None})
    else:
        print(f"{v.directory}: valid release {v.name} {v.version} (security_version {v.security_version})")
        print(f"  digest   sha256:{v.digest}")
        print(f"  signer   {v.signer}" + (f" ({v.key_source})" if v.key_source else ""))
        print(f"  files    {len(v.files)} to transfer, {_mb(v.total_bytes)}")
    return 0
