"""``fieldkit-agent``: serve the fieldkit protocol on stdio (SSH, local) or a serial port."""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fieldkit-agent", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    serve = sub.add_parser("serve", help="serve the fieldkit protocol")
    how = serve.add_mutually_exclusive_group(required=True)
    how.add_argument("--stdio", action="store_true", help="serve one session on stdin/stdout")
    how.add_argument("--serial", metavar="PORT", help="serve sessions on a serial port, forever")
    serve.add_argument("--baud", type=int, default=115200)
    serve.add_argument("--root", default=os.environ.get("FIELDKIT_AGENT_ROOT", "/"),
                       help="device root (default: $FIELDKIT_AGENT_ROOT or /)")
    rec = sub.add_parser("recover", help="finish or undo interrupted model activations (at boot, before the "
                                          "inference service; also done at every serve start)")
    rec.add_argument("--root", default=os.environ.get("FIELDKIT_AGENT_ROOT", "/"),
                     help="device root (default: $FIELDKIT_AGENT_ROOT or /)")
    rec.add_argument("--restart-services", action="store_true",
                     help="restart the service of a reverted model (not at boot: the unit runs before it)")
    sub.add_parser("version", help="print the agent version")
    sub.add_parser("bench", help="run an inference benchmark (started by the agent)", add_help=False)
    sub.add_parser("smoke", help="run a release's smoke test (started by the agent)", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from fieldkit.agent import benchrun
        return benchrun.main(argv[1:])
    if argv[:1] == ["smoke"]:
        from fieldkit.agent import smoke
        return smoke.main(argv[1:])
    args = parser.parse_args(argv)

    from fieldkit.agent import AGENT_VERSION
    if args.cmd == "version":
        print(AGENT_VERSION)
        return 0
    if args.cmd not in ("serve", "recover"):
        parser.print_help()
        return 2
    if not os.path.isdir(args.root):
        sys.stderr.write("fieldkit-agent: device root %s is not a directory\n" % args.root)
        return 2
    if args.cmd == "recover":
        return recover(args.root, args.restart_services, report=True)
    if args.serial:  # the installed agent's unit starts: an upgrade of it to finish, undo or try
        from fieldkit.agent import upgrade
        code = upgrade.on_start(args.root, argv)
        if code is not None:
            return code
    recover(args.root, True)  # every start finishes or undoes what a killed agent left half done
    if args.stdio:
        return serve_stdio(args.root)
    return serve_serial(args.serial, args.baud, args.root)


def recover(root, restart, report=False):
    """Recover every model under ``root``; prints one JSON line with ``report``. Never raises."""
    import json

    from fieldkit.agent.activation import recover as recover_models
    from fieldkit.agent.files import DeviceRoot
    from fieldkit.agent.models import ModelStore
    from fieldkit.agent.protocol import RemoteError
    from fieldkit.agent.log import log

    agent = None
    if report:  # the boot unit: an upgrade of the installed agent nobody is trying any more (upgrade.py)
        from fieldkit.agent import upgrade
        agent = upgrade.recover(root)
        if agent and agent["action"] != "skipped_locked":
            log("recovery: agent upgrade %s (%s)" % (agent["action"], agent.get("reason") or agent.get("version")))
    try:
        done = recover_models(ModelStore.open(DeviceRoot(root)), restart=restart)
    except (RemoteError, OSError) as exc:
        log("recovery failed: %s" % getattr(exc, "message", exc))
        if report:
            print(json.dumps(dict({"recovered": [], "error": str(getattr(exc, "message", exc))},
                                  **({"agent": agent} if agent else {}))))
        return 1
    for item in done:
        if item["action"] not in ("skipped_locked",):
            log("recovery: model %s %s (active: %s)" % (item["name"], item["action"], item["active"]))
    if report:
        print(json.dumps(dict({"recovered": done}, **({"agent": agent} if agent else {}))))
    failed = agent is not None and agent["action"] == "error"
    return 1 if failed or any(i["action"] in ("error", "broken_current") for i in done) else 0


def serve_stdio(root):
    from fieldkit.agent.server import AgentSession
    from fieldkit.agent.streams import FdStream

    # Keep the protocol stream away from anything that prints: move fd 1 aside.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    stream = FdStream(0, out_fd)
    AgentSession(stream, root).serve()  # ends on EOF, idle timeout, or a stream out of step
    return 0


def serve_serial(port, baud, root):
    import signal
    import time

    from fieldkit.agent.arq import ArqLink
    from fieldkit.agent.log import log
    from fieldkit.agent.server import AgentSession
    from fieldkit.agent.streams import open_tty

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            raw = open_tty(port, baud)
        except OSError as exc:
            log("cannot open %s: %s; retrying in 2 s" % (port, exc))
            time.sleep(2)
            continue
        link = ArqLink(raw, name=port)
        try:
            while True:
                session = link.accept()
                log("session started on %s" % port)
                try:
                    AgentSession(session, root, idle_timeout_s=15.0, transport="serial").serve()
                except Exception:  # last resort: one session's bug must not end the service
                    import traceback
                    log("session on %s failed:\n%s" % (port, traceback.format_exc()))
                    session.close()
                log("session ended on %s" % port)
        except OSError as exc:
            log("serial port %s failed: %s; reopening" % (port, exc))
        finally:
            link.close()


if __name__ == "__main__":
    sys.exit(main())
