"""``local:`` links: the agent in a subprocess on this machine (self-test and simulation)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from fieldkit.agent.streams import FdStream
from fieldkit.errors import ConnectError
from fieldkit.link.zipapp import agent_archive


class ProcessStream(FdStream):
    """Stream over a child's stdin/stdout; closing it ends the child (no orphans)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        super().__init__(proc.stdout.fileno(), proc.stdin.fileno())
        self.proc = proc
        self._stderr: deque[bytes] = deque(maxlen=64)
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def close(self) -> None:
        super().close()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=3)


def spawn_local_agent(root: str | None, cache_dir: Path, python: str | None = None) -> ProcessStream:
    root_dir = root or "/"
    if not Path(root_dir).is_dir():
        raise ConnectError(f"local device root {root_dir} is not a directory",
                           hint="create it, or use `local:` for this machine's root")
    pyz = agent_archive().write_cached(cache_dir)
    cmd = [python or sys.executable, str(pyz), "serve", "--stdio", "--root", root_dir]
    try:
        # Its own session: Ctrl-C in the technician's terminal reaches fieldkit, which cancels
        # cleanly and waits for the device's confirmation; the "device" must not die first.
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
    except OSError as exc:
        raise ConnectError(f"could not start the local agent ({cmd[0]}): {exc}") from exc
    return ProcessStream(proc)
