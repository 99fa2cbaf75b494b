"""Replacing the agent installed on the device (stdlib only, Python 3.6 syntax).

Over serial the agent is not pushed per session as over SSH: ``fieldkit agent bundle``'s install.sh
installs it as ``/usr/local/lib/fieldkit/fieldkit-agent.pyz`` (``"agent"`` in the device's
``etc/fieldkit/agent.json`` moves it) and the unit ``fieldkit-agent@PORT.service`` serves it.
``fieldkit agent upgrade DEVICE`` replaces it. The installed file ``A`` stays the old, known-good
agent until the new one has served the laptop, so whatever kills what (kill -9, power loss, a new
agent that cannot start), a runnable agent is installed::

    laptop   put A.<sha16>.new                      resumable, beside A (same file system: atomic rename)
    agent_upgrade {"sha256"}                        sha256 of the staged file = the laptop's (computed
                                                    before the upload); a zipapp whose ``version`` answers
                                                    (run with this Python, bounded); A.upgrade.json
                                                    "pending" (durable); after the answer:
                                                    ``systemctl --no-block restart UNIT``
    unit start: the old agent (A), pending          tries += 1 (at most 3 starts), step "trial"; it runs
                                                    the NEW file as its child and watches it. The child
                                                    exits, or is not confirmed within ``trial_s``: it is
                                                    ended, the state is "reverted", the old agent serves
    agent_upgrade_confirm (the laptop, through      step "confirming", A -> A.previous (a hard link or a
    the new agent after it reconnected)             copy), A.<sha16>.new -> A (os.replace), "committed"

A start that finds "confirming" (killed mid-swap) finishes the swap and runs the new agent; boot
recovery (``fieldkit-agent recover``) reverts a pending upgrade nobody is trying (the lock
``A.lock`` is held by the agent watching a trial). Every outcome is in the device journal
(``agent.upgrade``, ``agent.upgrade.commit``, ``agent.upgrade.revert``).

The running agent knows its own file from its zipimporter (``__loader__.archive``): an agent run
from a source tree, or one pushed for an SSH or local session, is not the installed one and refuses.
Test hooks: ``FIELDKIT_AGENT_CRASH_AT`` (:func:`~.activation.crash_point`, steps ``agent_upgrade:*``),
``FIELDKIT_AGENT_SYSTEMCTL`` (the program that restarts the unit), ``FIELDKIT_AGENT_UNIT`` (the
agent's own unit; the bundle's unit sets it, else ``/proc/self/cgroup`` names it).
"""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

from fieldkit.agent import AGENT_VERSION
from fieldkit.agent.activation import UNIT, crash_point, restart_service, systemctl
from fieldkit.agent.devjournal import utc_now
from fieldkit.agent.fields import get_float, get_sha256, shorten
from fieldkit.agent.files import DeviceRoot, atomic_write, fsync_dir, open_nofollow
from fieldkit.agent.log import log
from fieldkit.agent.models import ModelLock, ModelStore
from fieldkit.agent.protocol import RemoteError
from fieldkit.agent.staging import operator

TRIAL_ENV = "FIELDKIT_AGENT_TRIAL"  # set by the old agent for the new one it runs on trial: its sha256
UNIT_ENV = "FIELDKIT_AGENT_UNIT"
MAX_AGENT = 64 << 20               # bytes of an agent zipapp
MAX_STATE = 1 << 16
MAX_TRIES = 3                      # unit starts that run the new agent before the old one takes over for good
TRIAL_S = 90.0                     # the new agent must be confirmed within this (the laptop may ask 5..900)
VERSION_TIMEOUT_S = 30.0
RESTART_GRACE_S = 3.0              # after the answer: time for the laptop to close the session
POLL_S = 0.2
STEPS = ("staged", "trial", "confirming")
STATES = ("pending", "committed", "reverted")
REQUIRED_MEMBERS = ("__main__.py", "fieldkit/agent/__init__.py", "fieldkit/agent/__main__.py",
                    "fieldkit/agent/upgrade.py")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def running_archive():
    """The zipapp this agent runs from (a real path), or None when it runs from a source tree."""
    archive = getattr(globals().get("__loader__"), "archive", None)  # a zipimporter knows its archive
    return os.path.realpath(archive) if isinstance(archive, str) and archive else None


def own_unit():
    """The systemd unit this agent runs in: $FIELDKIT_AGENT_UNIT (the bundle's unit sets it), else
    a ``fieldkit-agent*.service`` that /proc/self/cgroup names (never another unit: restarting an
    unrelated service is worse than refusing); None outside a unit."""
    unit = os.environ.get(UNIT_ENV)
    if not unit:
        try:
            with open("/proc/self/cgroup") as fh:
                lines = fh.read(1 << 14).splitlines()
        except OSError:
            lines = []
        for line in lines:
            last = line.rsplit("/", 1)[-1]
            if last.startswith("fieldkit-agent") and last.endswith(".service"):
                unit = last
                break
    if unit and UNIT.match(unit) and not unit.startswith("-"):
        return unit
    return None


def digest(full, where, limit=MAX_AGENT):
    """sha256 of a regular file (no symlink), at most ``limit`` bytes."""
    fd = open_nofollow(full, where, os.O_RDONLY)
    h = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb") as fh:
        while True:
            block = fh.read(1 << 16)
            if not block:
                break
            size += len(block)
            if size > limit:
                raise RemoteError("too_large", "%s is larger than %d MB: not an agent" % (where, limit >> 20))
            h.update(block)
    return h.hexdigest()


def _digest_or_none(full, where):
    try:
        return digest(full, where)
    except RemoteError as exc:
        if exc.code in ("not_found", "too_large", "not_a_file", "bad_path"):
            return None
        raise


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Agent(object):
    """Where the installed agent and its upgrade state live on this device (:func:`open`)."""

    def __init__(self, fs, store):
        self.fs = fs
        self.store = store
        self.rel = store.paths["agent"]
        self.installed = fs.resolve(self.rel)
        self.dir = os.path.dirname(self.installed)
        self.state_path = self.installed + ".upgrade.json"
        self.previous = self.installed + ".previous"
        self.lock_path = self.installed + ".lock"

    @classmethod
    def open(cls, fs):
        return cls(fs, ModelStore.open(fs))

    def where(self, full):
        return self.fs.device_path(full)

    def staged(self, sha):
        """Where the laptop uploads the new agent with this sha256: beside the installed one."""
        return "%s.%s.new" % (self.installed, sha[:16])

    def lock(self):
        return ModelLock(self.lock_path, "agent", self.where(self.lock_path))

    def journal(self, event, details):
        self.store.journal(event, details)

    # ---- the state file ----------------------------------------------------------------------
    def read_state(self):
        """The upgrade state (None: never upgraded); RemoteError ``bad_state`` when damaged."""
        where = self.where(self.state_path)
        try:
            fd = open_nofollow(self.state_path, where, os.O_RDONLY)
        except RemoteError as exc:
            if exc.code == "not_found":
                return None
            raise RemoteError("bad_state", exc.message)
        try:
            with os.fdopen(fd, "rb") as fh:
                state = json.loads(fh.read(MAX_STATE).decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise RemoteError("bad_state", "%s is not valid JSON (%s)" % (where, shorten(str(exc), 80)))
        ok = (isinstance(state, dict) and state.get("state") in STATES
              and all(isinstance(state.get(k), dict) and isinstance(state[k].get("sha256"), str)
                      and _SHA.match(state[k]["sha256"]) and isinstance(state[k].get("version"), str)
                      for k in ("old", "new")))
        if ok and state["state"] == "pending":
            ok = state.get("step") in STEPS and isinstance(state.get("tries", 0), int)
        if not ok:
            raise RemoteError("bad_state", "%s is not an agent upgrade state; remove it to go on with the "
                                           "installed agent" % where)
        return state

    def write_state(self, state):
        state["updated"] = utc_now()
        data = json.dumps(state, sort_keys=True, indent=1, allow_nan=False).encode("utf-8") + b"\n"
        atomic_write(self.state_path, data, mode=0o644)

    # ---- the files -----------------------------------------------------------------------------
    def place(self, src, dest):
        """``dest`` := the file ``src`` (a hard link, a copy where links fail), atomically, mode 0644."""
        tmp = "%s.tmp-%d" % (dest, os.getpid())
        _unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            _unlink(tmp)
            raise
        fsync_dir(os.path.dirname(dest))

    def leftovers(self, keep=()):
        """Remove staged agents (complete or partial) other than ``keep`` (real paths)."""
        prefix = os.path.basename(self.installed) + "."
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            full = os.path.join(self.dir, name)
            if (name.startswith(prefix) and name.endswith((".new", ".new.part"))
                    and os.path.realpath(full) not in keep):
                _unlink(full)


# ---- what the laptop asks ----------------------------------------------------------------------------
def _facts(agent):
    """This agent, the installed one and the upgrade state, and why an upgrade would be refused."""
    running = running_archive()
    installed_real = os.path.realpath(agent.installed)
    state = agent.read_state()
    pending = state if state is not None and state["state"] == "pending" else None
    trial = bool(pending and running and os.environ.get(TRIAL_ENV) == pending["new"]["sha256"]
                 and running == os.path.realpath(agent.staged(pending["new"]["sha256"])))
    sha = _digest_or_none(running, running) if running else None
    installed_sha = _digest_or_none(agent.installed, agent.rel)
    # after a confirmed upgrade the new agent keeps running from its staged file (a link of A)
    committed = bool(state and state["state"] == "committed" and running and sha == installed_sha
                     and running == os.path.realpath(agent.staged(state["new"]["sha256"])))
    reason = code = None
    if running is None:
        code, reason = "not_installed", (
            "this agent runs from a source tree (%s), not from an installed zipapp: install the agent on the device "
            "with `fieldkit agent bundle` and its install.sh, then upgrade that one" % os.path.dirname(
                os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    elif installed_sha is None:
        code, reason = "not_installed", (
            "no agent is installed at %s (the device's agent path; \"agent\" in /etc/fieldkit/agent.json moves it): "
            "install one with `fieldkit agent bundle` and its install.sh" % agent.rel)
    elif running != installed_real and not trial and not committed:
        code, reason = "not_installed", (
            "this agent runs from %s (fieldkit pushes one for each SSH or local session), not from the installed "
            "agent %s: upgrade that one over the serial line it serves, or run install.sh from a new bundle"
            % (agent.where(running), agent.rel))
    elif pending:
        code, reason = "pending", (
            "an upgrade to agent %s (sha256 %s) is pending (step %s): it is confirmed through the new agent or "
            "reverted first" % (pending["new"]["version"], pending["new"]["sha256"][:16], pending.get("step")))
    else:
        unit = own_unit()
        if unit is None:
            code, reason = "no_unit", (
                "this agent does not run under its systemd unit (no %s, no fieldkit-agent unit in "
                "/proc/self/cgroup), so it cannot be restarted into the new agent: serve it with the bundle's "
                "fieldkit-agent@PORT.service"
                % UNIT_ENV)
        elif systemctl(agent.fs) is None:
            code, reason = "no_systemd", ("there is no systemctl on the device to restart %s with" % unit)
    return {"running": running, "sha256": sha, "installed_sha256": installed_sha, "state": state,
            "pending": pending, "trial": trial, "code": code, "reason": reason}


def status_op(session, req):
    """``agent_upgrade_status {"sha256"?}``: this agent, the installed one, the upgrade state, and
    where the new agent with ``sha256`` is to be uploaded."""
    sha = get_sha256(req.args, "sha256")
    agent = Agent.open(session.fs)
    f = _facts(agent)
    state = f["state"]
    return {
        "version": AGENT_VERSION,
        "sha256": f["sha256"],
        "running": agent.where(f["running"]) if f["running"] else None,
        "installed": agent.rel,
        "installed_sha256": f["installed_sha256"],
        "previous": agent.where(agent.previous) if os.path.isfile(agent.previous) else None,
        "unit": own_unit(),
        "trial": f["trial"],
        "upgradable": f["code"] is None,
        "code": f["code"],
        "reason": f["reason"],
        "state": state["state"] if state else None,
        "upgrade": state,
        "staging": agent.where(agent.staged(sha)) if sha else None,
    }


def check_zipapp(path, where):
    """The new agent is a zipapp with the agent inside whose ``version`` answers with this Python:
    its version."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            damaged = zf.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise RemoteError("bad_agent", "%s is not a zip archive (%s): not an agent zipapp" % (where, shorten(str(exc))))
    if damaged:
        raise RemoteError("bad_agent", "%s: its member %s is damaged" % (where, shorten(damaged)))
    missing = [n for n in REQUIRED_MEMBERS if n not in names]
    if missing:
        raise RemoteError("bad_agent", "%s is not a fieldkit agent that can upgrade itself (it has no %s)"
                          % (where, ", ".join(missing)))
    env = dict(os.environ)
    env.pop(TRIAL_ENV, None)
    try:
        proc = subprocess.Popen([sys.executable, path, "version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=os.path.dirname(path))
    except OSError as exc:
        raise RemoteError("bad_agent", "cannot run %s with %s: %s" % (where, sys.executable, exc.strerror or exc))
    try:
        out, err = proc.communicate(timeout=VERSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RemoteError("bad_agent", "the new agent %s did not answer `version` within %.0f s"
                          % (where, VERSION_TIMEOUT_S))
    text = out.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        why = err.decode("utf-8", "replace").strip().splitlines()
        raise RemoteError("bad_agent", "the new agent %s does not run with %s (`version` ended with status %d: %s)"
                          % (where, sys.executable, proc.returncode, shorten(why[-1] if why else "no message", 300)))
    if not _VERSION.match(text):
        raise RemoteError("bad_agent", "the new agent %s answered `version` with %s, not a version"
                          % (where, shorten(repr(text), 80)))
    return text


def upgrade_op(session, req):
    """``agent_upgrade {"sha256", "trial_s"?}``: check the staged new agent, mark the upgrade
    pending, answer, then restart the agent's unit (the old agent runs the new one on trial)."""
    args = req.args
    sha = get_sha256(args, "sha256")
    if sha is None:
        raise RemoteError("bad_args", "sha256 is required: the new agent's digest, computed before the upload")
    trial_s = get_float(args, "trial_s", TRIAL_S, lo=5.0, hi=900.0)
    by = operator(args)
    agent = Agent.open(session.fs)
    lock = agent.lock()
    if not lock.try_acquire():
        raise RemoteError("busy", "another agent is upgrading or trying the installed agent right now (%s is "
                                  "locked); wait for it" % agent.where(agent.lock_path))
    try:
        f = _facts(agent)
        if f["code"] is not None:
            raise RemoteError(f["code"], f["reason"])
        if sha == f["installed_sha256"]:
            raise RemoteError("already_installed", "the installed agent %s is already this one (sha256 %s)"
                              % (agent.rel, sha[:16]))
        staged = agent.staged(sha)
        where = agent.where(staged)
        have = _digest_or_none(staged, where)
        if have is None:
            raise RemoteError("not_staged", "the new agent is not at %s: upload it there first (put)" % where)
        if have != sha:
            _unlink(staged)
            raise RemoteError("digest_mismatch", "the uploaded agent %s has sha256 %s, not %s as the laptop computed "
                              "before sending it: it was damaged on the way or changed on the device. It was removed "
                              "and nothing was changed; run the upgrade again" % (where, have[:16], sha[:16]))
        req.check_cancel()
        try:
            version = check_zipapp(staged, where)
        except RemoteError:
            _unlink(staged)
            raise
        unit = own_unit()
        state = {"state": "pending", "step": "staged", "tries": 0, "trial_s": trial_s, "unit": unit, "by": by,
                 "old": {"version": AGENT_VERSION, "sha256": f["installed_sha256"]},
                 "new": {"version": version, "sha256": sha}, "staged": os.path.basename(staged),
                 "started": utc_now()}
        agent.write_state(state)
    finally:
        lock.release()
    crash_point("agent_upgrade:pending")
    agent.journal("agent.upgrade", {"old": state["old"], "new": state["new"], "unit": unit, "by": by})
    _restart_later(agent, unit, req)
    return {"state": "pending", "old": state["old"], "new": state["new"], "unit": unit, "trial_s": trial_s,
            "installed": agent.rel, "staged": where}


def _restart_later(agent, unit, req):
    """Restart the unit once the answer is out and the laptop closed the session (bounded)."""
    def run():
        req.done.wait(30.0)
        req.session.closed.wait(RESTART_GRACE_S)
        crash_point("agent_upgrade:restart")
        log("restarting %s to try the new agent" % unit)
        try:
            restart_service(agent.fs, unit, block=False)
        except RemoteError as exc:
            log("could not restart %s: %s" % (unit, exc.message))
            _revert_quietly(agent, "the agent's unit %s could not be restarted: %s" % (unit, exc.message))

    threading.Thread(target=run, name="agent-upgrade-restart", daemon=True).start()


def confirm_op(session, req):
    """``agent_upgrade_confirm {"sha256"}``: the laptop reached the new agent on trial: install it
    (A -> A.previous, the new file -> A) and end the upgrade ("committed")."""
    sha = get_sha256(req.args, "sha256")
    if sha is None:
        raise RemoteError("bad_args", "sha256 is required: the agent being confirmed")
    by = operator(req.args)
    agent = Agent.open(session.fs)
    f = _facts(agent)
    state = f["state"]
    if state and state["state"] == "committed" and state["new"]["sha256"] == sha and f["sha256"] == sha:
        return _committed(agent, state)  # confirmed already (the answer was lost)
    if not f["pending"] or f["pending"]["new"]["sha256"] != sha:
        raise RemoteError("not_pending", "no upgrade to the agent with sha256 %s is pending on the device (state: %s)"
                          % (sha[:16], state["state"] if state else "never upgraded"))
    if not f["trial"]:
        raise RemoteError("not_trial", "this agent (%s, sha256 %s) is not the new one on trial: the upgrade is "
                          "confirmed through the new agent once the unit restarted it"
                          % (AGENT_VERSION, (f["sha256"] or "unknown")[:16]))
    state = f["pending"]
    state["step"] = "confirming"
    state["confirmed_by"] = by
    agent.write_state(state)
    crash_point("agent_upgrade:confirming")
    finish(agent, state)
    return _committed(agent, state)


def _committed(agent, state):
    return {"state": "committed", "version": state["new"]["version"], "sha256": state["new"]["sha256"],
            "old": state["old"], "installed": agent.rel,
            "previous": agent.where(agent.previous) if os.path.isfile(agent.previous) else None}


# ---- finishing and undoing ---------------------------------------------------------------------------
def finish(agent, state):
    """Install the confirmed agent (idempotent: also after a kill in the middle): keep the old one
    as ``.previous``, put the new one in place with one rename, mark the upgrade committed."""
    frm, to = state["old"]["sha256"], state["new"]["sha256"]
    staged = agent.staged(to)
    have = _digest_or_none(agent.installed, agent.rel)
    if have != to:
        if _digest_or_none(staged, agent.where(staged)) != to:
            raise RemoteError("bad_state", "the confirmed new agent %s is gone or changed; the installed agent stays"
                              % agent.where(staged))
        if have == frm:
            agent.place(agent.installed, agent.previous)
            crash_point("agent_upgrade:previous")
        agent.place(staged, agent.installed)
        crash_point("agent_upgrade:swapped")
    state.update(state="committed", step=None, committed=utc_now())
    agent.write_state(state)
    agent.leftovers(keep=(os.path.realpath(staged),))
    agent.journal("agent.upgrade.commit", {"old": state["old"], "new": state["new"], "by": state.get("confirmed_by"),
                                           "previous": agent.where(agent.previous)})
    log("agent %s installed (previous: %s kept as %s)" % (state["new"]["version"], state["old"]["version"],
                                                         agent.where(agent.previous)))


def revert(agent, state, reason):
    """The new agent is not installed after all: the old one stays installed (put back from
    ``.previous`` if the swap had already happened); the staged file goes."""
    frm, to = state["old"]["sha256"], state["new"]["sha256"]
    if (_digest_or_none(agent.installed, agent.rel) == to
            and _digest_or_none(agent.previous, agent.where(agent.previous)) == frm):
        agent.place(agent.previous, agent.installed)
    state.update(state="reverted", step=None, reason=reason, reverted=utc_now())
    agent.write_state(state)
    crash_point("agent_upgrade:revert")
    _unlink(agent.staged(state["new"]["sha256"]))
    agent.journal("agent.upgrade.revert", {"old": state["old"], "new": state["new"], "reason": reason})
    log("agent upgrade to %s reverted: %s" % (state["new"]["version"], reason))


def _revert_quietly(agent, reason):
    try:
        state = agent.read_state()
        if state and state["state"] == "pending":
            revert(agent, state, reason)
    except (RemoteError, OSError) as exc:
        log("could not revert the agent upgrade: %s" % getattr(exc, "message", exc))


def recover(root):
    """``fieldkit-agent recover`` (boot): finish a confirmed upgrade killed mid-swap, revert one that
    no agent is trying (its lock is free). ``{"action", "version", "reason"}`` or None."""
    try:
        agent = Agent.open(DeviceRoot(root))
        state = agent.read_state()
    except (RemoteError, OSError) as exc:
        return {"action": "error", "message": getattr(exc, "message", str(exc))}
    if state is None or state["state"] != "pending":
        return None
    lock = agent.lock()
    if not lock.try_acquire():
        return {"action": "skipped_locked", "version": state["new"]["version"]}
    try:
        return _settle(agent, "recovery: the upgrade to %s was not confirmed before the agent stopped")
    except (RemoteError, OSError) as exc:
        return {"action": "error", "message": getattr(exc, "message", str(exc))}
    finally:
        lock.release()


def _settle(agent, why):
    """Finish a confirmed upgrade, revert any other pending one (``why % new version`` says why)."""
    state = agent.read_state()
    if state is None or state["state"] != "pending":
        return None
    reason = why % state["new"]["version"]
    if state["step"] == "confirming":
        try:
            finish(agent, state)
            return {"action": "committed", "version": state["new"]["version"]}
        except RemoteError as exc:
            reason = exc.message
    revert(agent, state, reason)
    return {"action": "reverted", "version": state["old"]["version"], "reason": reason}


# ---- the unit starts: try the new agent under the old one -----------------------------------------------
def on_start(root, argv):
    """Before ``serve --serial``: None to serve, or the exit status of this process after it watched
    the new agent on trial (confirmed, then ended). Never raises."""
    if os.environ.get(TRIAL_ENV):
        return None  # the new agent on trial: it serves, the old one watches it
    running = running_archive()
    try:
        agent = Agent.open(DeviceRoot(root))
        if running is None or running != os.path.realpath(agent.installed):
            return None  # not the installed agent (a source tree, a copy elsewhere)
        state = agent.read_state()
        if state is None or state["state"] != "pending":
            agent.leftovers(keep=(running,))
            return None
        lock = agent.lock()
        if not lock.try_acquire():
            return None  # another port's agent is trying it
    except (RemoteError, OSError) as exc:
        log("agent upgrade check failed: %s" % getattr(exc, "message", exc))
        return None
    try:
        return _trial(agent, lock, argv)
    except (RemoteError, OSError) as exc:
        log("agent upgrade failed: %s" % getattr(exc, "message", exc))
        _revert_quietly(agent, "the old agent could not run the new one: %s" % getattr(exc, "message", exc))
        return None
    finally:
        lock.release()


def _trial(agent, lock, argv):
    state = agent.read_state()  # again, under the lock
    if state is None or state["state"] != "pending":
        return None
    if state["step"] == "confirming":
        _settle(agent, "the confirmed agent %s could not be installed")
        return _reexec(agent, argv)
    state["tries"] = int(state.get("tries") or 0) + 1
    if state["tries"] > MAX_TRIES:
        revert(agent, state, "the new agent was started %d times and never confirmed" % MAX_TRIES)
        return None
    to = state["new"]
    staged = agent.staged(to["sha256"])
    if _digest_or_none(staged, agent.where(staged)) != to["sha256"]:
        revert(agent, state, "the new agent %s is gone or changed" % agent.where(staged))
        return None
    state["step"] = "trial"
    state["trial_started"] = utc_now()
    agent.write_state(state)
    crash_point("agent_upgrade:trial")
    trial_s = float(state.get("trial_s") or TRIAL_S)
    env = dict(os.environ)
    env[TRIAL_ENV] = to["sha256"]
    try:
        child = subprocess.Popen([sys.executable, staged] + list(argv), env=env, stdin=subprocess.DEVNULL)
    except OSError as exc:
        revert(agent, state, "the new agent could not be started: %s" % (exc.strerror or exc))
        return None
    log("trying agent %s (pid %d, start %d of %d); the old one takes over unless it is confirmed within %.0f s"
        % (to["version"], child.pid, state["tries"], MAX_TRIES, trial_s))
    return _watch(agent, lock, child, state, trial_s, argv)


def _watch(agent, lock, child, state, trial_s, argv):
    stop = []
    handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handlers[sig] = signal.signal(sig, lambda signum, frame: stop.append(signum))
    deadline = time.monotonic() + trial_s
    sha = state["new"]["sha256"]
    try:
        while True:
            try:
                code = child.wait(POLL_S)
            except subprocess.TimeoutExpired:
                code = None
            if stop:  # the unit stops: so does the trial (the next start tries again, a bounded number of times)
                _end(child)
                return 0
            try:
                now = agent.read_state()
            except RemoteError:
                now = None
            if now is not None and now["state"] == "committed" and now["new"]["sha256"] == sha:
                lock.release()
                return _serve_on(child, stop)
            confirming = now is not None and now["state"] == "pending" and now.get("step") == "confirming"
            if code is not None:
                if confirming:
                    _settle(agent, "the confirmed agent %s could not be installed")
                    return _reexec(agent, argv)
                revert(agent, now or state, "the new agent %s ended (status %d) before it was confirmed"
                       % (state["new"]["version"], code))
                return None
            if not confirming and time.monotonic() > deadline:
                _end(child)
                revert(agent, now or state, "the new agent %s was not confirmed within %.0f s"
                       % (state["new"]["version"], trial_s))
                return None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _serve_on(child, stop):
    """Confirmed: the new agent serves; this process stays as the unit's main process until it ends."""
    while True:
        try:
            return child.wait(1.0)
        except subprocess.TimeoutExpired:
            if stop:
                _end(child)
                return 0


def _end(child):
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(5.0)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5.0)


def _reexec(agent, argv):
    """Serve the newly installed agent in this very process (the unit keeps its main pid)."""
    state = agent.read_state()
    if state is None or state["state"] != "committed":
        return None  # reverted: the old agent, already running here, serves
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    try:
        os.execv(sys.executable, [sys.executable, agent.installed] + list(argv))
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
            raise
        log("cannot start the new agent in place: %s; ending so that the unit starts it" % exc)
    return 1
