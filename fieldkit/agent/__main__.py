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
    sub.add_parser("version", help="print the agent version")
    sub.add_parser("bench", help="run an inference benchmark (started by the agent)", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from fieldkit.agent import benchrun
        return benchrun.main(argv[1:])
    args = parser.parse_args(argv)

    from fieldkit.agent import AGENT_VERSION
    if args.cmd == "version":
        print(AGENT_VERSION)
        return 0
    if args.cmd != "serve":
        parser.print_help()
        return 2
    if not os.path.isdir(args.root):
        sys.stderr.write("fieldkit-agent: device root %s is not a directory\n" % args.root)
        return 2
    if args.stdio:
        return serve_stdio(args.root)
    return serve_serial(args.serial, args.baud, args.root)


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
    from fieldkit.agent.server import AgentSession, log
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
                    AgentSession(session, root, idle_timeout_s=15.0).serve()
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
