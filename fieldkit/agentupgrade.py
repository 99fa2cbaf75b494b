"""``fieldkit agent upgrade DEVICE``: replace the agent installed on a device.

Over SSH fieldkit pushes its agent for every session; over serial the agent is installed on the
device (``fieldkit agent bundle``, install.sh) and served by a systemd unit, so an older one stays
until it is replaced. This replaces it over an authenticated session (the device's side and why it
always keeps a runnable agent: fieldkit/agent/upgrade.py)::

    status (refused early when the running agent is not the installed one, or an upgrade is pending)
    -> put the zipapp SSH pushes (fieldkit.link.zipapp) beside the installed one, resumable; its
       sha256 computed here before the upload
    -> agent_upgrade: the device checks the digest and runs the new zipapp's ``version``, marks the
       upgrade pending and restarts its unit: the old agent runs the new one on trial
    -> reconnect (bounded: the trial time and a margin) -> the new agent answers -> agent_upgrade_confirm:
       it becomes the installed agent, the old one is kept as ``.previous``.
       The new agent does not come up, or is not confirmed in time: the device goes back to the old
       one by itself, and the laptop, reconnecting, reports that ("reverted", exit 4).

Journaled on the laptop as one ``agent.upgrade`` entry (from/to versions and sha256s, the outcome).
"""

from __future__ import annotations

import io
import re
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from typing import Any, Callable

from fieldkit.devices import ResolvedDevice, open_session, resolve
from fieldkit.errors import Cancelled, ConfigError, ConnectError, DeviceError
from fieldkit.journal import Journal
from fieldkit.link.zipapp import AgentArchive, agent_archive
from fieldkit.locations import Home
from fieldkit.textfmt import TransferMeter

ProgressFn = Callable[[dict], None]
TRIAL_S = 90.0
RECONNECT_MARGIN_S = 30.0  # beyond the trial: the device's own fallback and a slow reconnect
_AGENT_VERSION = re.compile(rb"""^AGENT_VERSION\s*=\s*["']([^"'\n]{1,64})["']""", re.M)


@dataclass
class AgentUpgrade:
    """How an upgrade ended. ``result``: ``upgraded``, ``unchanged`` (already installed) or
    ``reverted`` (the new agent did not come up; the old one is installed and answers)."""

    device: str
    result: str
    old_version: str
    old_sha256: str | None
    new_version: str
    new_sha256: str
    installed: str
    previous: str | None
    message: str
    elapsed_s: float

    @property
    def exit_code(self) -> int:
        return 4 if self.result == "reverted" else 0

    def as_dict(self) -> dict:
        return asdict(self)


def archive_version(data: bytes) -> str:
    """The AGENT_VERSION inside an agent zipapp (ConfigError when it is not one)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            init = zf.read("fieldkit/agent/__init__.py")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ConfigError(f"not an agent zipapp: {exc}") from None
    m = _AGENT_VERSION.search(init)
    if not m:
        raise ConfigError("the agent zipapp names no AGENT_VERSION in fieldkit/agent/__init__.py")
    return m.group(1).decode("utf-8", "replace")


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:4])


def _emit(progress: ProgressFn | None, stage: str, message: str, **data: Any) -> None:
    if progress is not None:
        try:
            progress({"stage": stage, "message": message, **data})
        except Exception:
            pass  # a broken display must not break the upgrade


def _pause(cancel: threading.Event | None, seconds: float) -> None:
    if cancel is not None:
        cancel.wait(seconds)
    else:
        time.sleep(seconds)


def upgrade_agent(home: Home, spec: str, *, archive: AgentArchive | None = None, trial_s: float = TRIAL_S,
                  downgrade: bool = False, confirm: Callable[[str], bool] | None = None,
                  progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                  timeout: float = 15.0, dead_after_s: float = 6.0) -> AgentUpgrade:
    """Replace the agent installed on ``spec`` with ``archive`` (default: the agent this fieldkit
    carries, the one SSH pushes). ``confirm(question)`` is asked once the device said what it
    runs (False: Cancelled, nothing changed). ``dead_after_s``: a silent link is declared dead
    after this (the agent is killed on purpose by the restart, so this bounds each reconnect).

    Raises ConnectError (exit 3), DeviceError (exit 4: the device refused, e.g. ``not_installed``,
    ``not_authenticated``, ``digest_mismatch``, ``bad_agent``), ConfigError (exit 2: a downgrade
    without ``downgrade``), Cancelled (130)."""
    t0 = time.monotonic()
    arch = archive or agent_archive()
    new_version = archive_version(arch.data)
    with Journal.open(home) as journal:
        dev = resolve(spec, home)
        link = {"timeout": timeout, "dead_after_s": dead_after_s}
        session = open_session(dev, home, journal=journal, **link)
        try:
            status = _status(session, arch.sha256)
            old_version, old_sha = status.version, status.installed_sha256
            if old_sha == arch.sha256 and status.state != "pending":
                return AgentUpgrade(dev.name, "unchanged", old_version, old_sha, new_version, arch.sha256,
                                    status.installed, status.previous, f"{dev.name} already has agent {new_version} "
                                    f"({arch.short}) installed at {status.installed}", time.monotonic() - t0)
            up = status.upgrade
            resume = status.state == "pending" and up is not None and up.new.sha256 == arch.sha256
            if resume:
                assert up is not None
                old_version, old_sha = up.old.version, up.old.sha256
            else:
                _refuse_unless_upgradable(dev.name, status)
            if session.auth is not None and not session.auth.ok:
                raise DeviceError(f"{dev.name}: replacing its agent changes the device, and this serial session is not "
                                  f"authenticated ({session.auth.code}: {session.auth.reason}); nothing was changed",
                                  code="not_authenticated",
                                  hint="the device must list your operator key (`fieldkit init --show-public-key`) in "
                                       "/etc/fieldkit/operators: `fieldkit anchors add DEVICE KEY --operator` over SSH")
            if _version_key(new_version) < _version_key(old_version) and not downgrade:
                raise ConfigError(f"{dev.name} runs agent {old_version}, newer than {new_version} (this fieldkit's): "
                                  "nothing was changed", hint="add --downgrade to install the older agent anyway")
            question = (f"replace the agent installed on {dev.name} ({old_version}, {(old_sha or '?')[:16]}) with "
                        f"{new_version} ({arch.short})?")
            if confirm is not None and not confirm(question):
                raise Cancelled(f"agent upgrade of {dev.name} cancelled; nothing was changed")
            details = {"from_version": old_version, "from_sha256": old_sha, "to_version": new_version,
                       "to_sha256": arch.sha256, "digest": arch.sha256, "installed": status.installed,
                       "trial_s": trial_s, "transport": session.transport}
            with session.operation("agent.upgrade", details) as op:
                if resume:  # an earlier run stopped waiting for the new agent: see it through
                    assert up is not None
                    op.details["resumed"] = True
                    session.close("the new agent is confirmed in a session of its own")
                    result = _conclude(home, dev, journal, link, arch, new_version, up.old, status.installed,
                                       up.trial_s or trial_s, progress, cancel)
                else:
                    result = _run(home, dev, journal, link, session, status, arch, new_version, trial_s, progress,
                                  cancel)
                result.elapsed_s = round(time.monotonic() - t0, 3)
                op.details.update(result=result.result, previous=result.previous, message=result.message)
                if result.result == "reverted":
                    op.outcome = "failed"
                return result
        finally:
            session.close()


def _status(session: Any, sha: str) -> Any:
    if not session.supports("agent_upgrade_status"):
        raise DeviceError(f"{session.name} runs agent {session.hello.agent_version}, which cannot replace itself",
                          code="unsupported",
                          hint="install the new agent there once with `fieldkit agent bundle` and its install.sh")
    return session.call("agent_upgrade_status", {"sha256": sha}, timeout=60)


def _refuse_unless_upgradable(name: str, status: Any) -> None:
    if status.upgradable:
        return
    hints = {"not_installed": "the installed agent is upgraded over the serial line it serves "
                              "(`fieldkit agent upgrade serial:///dev/ttyUSB0?baud=115200`)",
             "pending": "connect again in a minute: the device confirms or reverts the pending upgrade by itself",
             "no_unit": "serve the agent with the bundle's unit: systemctl enable --now fieldkit-agent@ttyS0.service"}
    raise DeviceError(f"{name}: {status.reason or 'the device cannot upgrade its agent'}; nothing was changed",
                      code=status.code or "not_upgradable", hint=hints.get(status.code or ""))


def _run(home: Home, dev: ResolvedDevice, journal: Journal, link: dict, session: Any, status: Any,
         arch: AgentArchive, new_version: str, trial_s: float, progress: ProgressFn | None,
         cancel: threading.Event | None) -> AgentUpgrade:
    by = _by(journal)
    local = arch.write_cached(home.root / "cache")
    size = len(arch.data)
    staging = status.staging
    st = session.call("stat", {"path": staging}, cancel=cancel)
    if not (st.exists and st.size == size):  # a whole copy is checked by the device anyway
        partial = st.partial_size or 0
        offset = partial if 0 < partial < size else 0
        _emit(progress, "upload", f"sending agent {new_version} ({size / 1e3:.0f} kB) to {staging}"
              + (f", resuming at {offset} bytes" if offset else ""), bytes_done=offset, bytes_total=size)
        meter = TransferMeter(size, offset)  # rate and ETA as the install's transfer reports them

        def on_bytes(done: int, total: int) -> None:
            if meter.update(done) or done == total:
                _emit(progress, "upload", f"sending agent {new_version}", **meter.fields())

        session.upload(local, staging, size=size, sha256=arch.sha256, offset=offset, cancel=cancel,
                       progress=on_bytes,
                       timeout=max(120.0, size / (64 * 1024)))
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"agent upgrade of {dev.name} cancelled after the upload; the installed agent is unchanged "
                        f"(the upload stays staged at {staging})")
    _emit(progress, "check", f"{dev.name} checks the new agent (sha256, zipapp, `version`)")
    old = _Build(status.version, status.installed_sha256)
    try:
        pending = session.call("agent_upgrade", {"sha256": arch.sha256, "trial_s": trial_s, "by": by}, timeout=120)
        old = pending.old
    except ConnectError:  # the link went with its answer: the device says where it stands once reconnected
        pass
    session.close("the agent restarts into the new one")
    _emit(progress, "restart", f"{dev.name} restarts its agent: the old one tries the new one; confirming it "
          f"(at most {trial_s + RECONNECT_MARGIN_S:.0f} s)")
    return _conclude(home, dev, journal, link, arch, new_version, old, status.installed, trial_s, progress, cancel)


@dataclass
class _Build:
    version: str
    sha256: str | None


def _conclude(home: Home, dev: ResolvedDevice, journal: Journal, link: dict, arch: AgentArchive, new_version: str,
              old: Any, installed: str, trial_s: float, progress: ProgressFn | None,
              cancel: threading.Event | None) -> AgentUpgrade:
    outcome, confirmed, last = _await_new_agent(home, dev, journal, link, arch, _by(journal), trial_s, cancel,
                                                progress)
    if outcome == "upgraded":
        previous = confirmed.previous if confirmed is not None else last.previous
        return AgentUpgrade(dev.name, "upgraded", old.version, old.sha256, new_version, arch.sha256, installed,
                            previous, f"{dev.name} now runs agent {new_version} ({arch.short}), installed at "
                            f"{installed}; the previous one ({old.version}) is kept as {previous}", 0.0)
    reason = (last.upgrade.reason if last.upgrade is not None else None) or "no reason given"
    return AgentUpgrade(dev.name, "reverted", old.version, old.sha256, new_version, arch.sha256, installed,
                        last.previous, f"{dev.name} went back to agent {old.version}: {reason}. The old agent is "
                        "installed and answers; nothing else was changed", 0.0)


def _by(journal: Journal) -> str | None:
    ident = getattr(journal, "identity", None)
    return f"{ident.name} ({ident.fingerprint})"[:200] if ident is not None else None


def _await_new_agent(home: Home, dev: ResolvedDevice, journal: Journal, link: dict, arch: AgentArchive,
                     by: str | None, trial_s: float, cancel: threading.Event | None,
                     progress: ProgressFn | None) -> tuple[str, Any, Any]:
    """Reconnect until the new agent answers (confirm it) or the device says it went back to the old
    one: ``("upgraded" | "reverted", confirm result or None, last status)``."""
    deadline = time.monotonic() + trial_s + RECONNECT_MARGIN_S
    problem: str | None = None
    answered = False
    hint = ("the device goes back to the old agent by itself when the new one is not confirmed; check the cable, "
            "then run `fieldkit agent upgrade` again to see where it stands")
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped waiting for {dev.name}'s new agent; unless it is confirmed within "
                            f"{trial_s:.0f} s the device goes back to the old one by itself (run `fieldkit agent "
                            "upgrade` again to see)")
        if time.monotonic() >= deadline:
            waited = f"{trial_s + RECONNECT_MARGIN_S:.0f} s after the restart"
            if answered:
                raise DeviceError(f"{dev.name}: the agent upgrade did not settle within {waited} (last: {problem})",
                                  code="upgrade_unsettled", hint=hint)
            raise ConnectError(f"{dev.name}: no agent answered within {waited}"
                               + (f" (last: {problem})" if problem else ""), hint=hint)
        left = deadline - time.monotonic()
        try:
            s = open_session(dev, home, journal=journal, timeout=min(link["timeout"], max(left, 2.0)),
                             dead_after_s=link["dead_after_s"], witness=False,
                             record_failure=False)  # the restart window: the result is journaled once
        except ConnectError as exc:
            problem = exc.message
            _pause(cancel, 0.5)
            continue
        try:
            st = s.call("agent_upgrade_status", {"sha256": arch.sha256}, timeout=30)
            answered = True
            up = st.upgrade
            if up is not None and up.new.sha256 == arch.sha256:
                if up.state == "reverted":
                    return "reverted", None, st
                if up.state == "committed" and st.sha256 == arch.sha256:
                    return "upgraded", None, st  # confirmed already (an answer lost with the link)
                if up.state == "pending" and st.trial:
                    _emit(progress, "confirm", f"the new agent {st.version} answers on {dev.name}; confirming it")
                    res = s.call("agent_upgrade_confirm", {"sha256": arch.sha256, "by": by}, timeout=120)
                    return "upgraded", res, st
            elif st.state != "pending":
                raise DeviceError(f"{dev.name} did not take the upgrade (the link was lost before it answered): "
                                  f"it runs agent {st.version}, unchanged", code="not_started",
                                  hint="run `fieldkit agent upgrade` again: the upload is kept on the device")
            problem = f"agent {st.version} answers, the upgrade is {up.state if up else 'not recorded'}"
        except ConnectError as exc:  # the link went down (the restart, a killed trial): reconnect
            problem = exc.message
        except DeviceError as exc:  # e.g. the new agent refuses to confirm: the device reverts at its deadline
            if exc.code == "not_started":
                raise
            problem = exc.message
        finally:
            s.close()
        _pause(cancel, 0.5)
