"""Activation, commit, revert and recovery of an installed model (stdlib only, Python 3.6 syntax).

The plan (docs/releases.md; REFERENCE.md "Atomic activation on Linux"): before each step
``state.json`` is durably replaced with the step it is about to take, so whatever kills the agent
(kill -9, power loss), the next start knows what was under way::

    model_activate   pending/swap    -> current := TARGET, previous := the version it replaces
                     pending/restart -> systemctl restart UNIT (when a unit is given)
                     pending/trial   -> answered; the laptop runs model_smoke
    model_commit     committed       floor := max(floor, security_version)   (one durable write)
    model_revert     pending/revert  -> current := the version before, previous := as it was
                     reverted        (also what recovery does with any activation not committed)

The agent running an activation holds an exclusive flock on ``NAME/.lock`` from ``model_activate``
until its commit or revert (:class:`SessionLocks`); recovery skips a model whose lock a live agent
holds. A session that ends with an activation still pending reverts it; an agent killed outright
leaves it to the next start (every ``serve``, and ``fieldkit-agent recover`` at boot).

Test hook: ``FIELDKIT_AGENT_CRASH_AT=STEP`` makes the agent kill itself with SIGKILL at the
:func:`crash_point` named STEP (tests/test_agent_releases.py proves recovery at every step this way;
``FIELDKIT_AGENT_CRASH_ONCE=PATH``: only once).
Simulated devices (an agent root other than ``/``) never run the machine's own ``systemctl``;
``FIELDKIT_AGENT_SYSTEMCTL=PATH`` names the program to run instead (tests).
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading

from fieldkit.agent.devjournal import utc_now
from fieldkit.agent.fields import get_str, shorten
from fieldkit.agent.protocol import RemoteError
from fieldkit.agent.releasefmt import check_model_name, check_version
from fieldkit.agent.staging import operator, verify_version

UNIT = re.compile(r"^[A-Za-z0-9@_.:\\-]{1,256}$")
RESTART_TIMEOUT_S = 120.0
PERMISSION_WORDS = ("access denied", "interactive authentication required", "not authorized", "permission denied")


def crash_point(step):
    """Test hook: SIGKILL this agent at ``step`` when FIELDKIT_AGENT_CRASH_AT names it (see the module doc).
    With FIELDKIT_AGENT_CRASH_ONCE=PATH only the first agent to get there dies (it creates PATH): a
    unit that restarts the agent with the same environment then sees one kill, as a power cut is."""
    if os.environ.get("FIELDKIT_AGENT_CRASH_AT") != step:
        return
    once = os.environ.get("FIELDKIT_AGENT_CRASH_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except OSError:
            return  # killed once already
    os.kill(os.getpid(), signal.SIGKILL)


class SessionLocks(object):
    """The model locks one session holds across requests (activation -> smoke -> commit)."""

    def __init__(self):
        self.held = {}
        self.mutex = threading.Lock()

    def hold(self, store, name):
        """Take NAME's lock for the session (kept until :meth:`release`); busy if another agent has it."""
        with self.mutex:
            lock = self.held.get(name)
            if lock is None:
                lock = store.lock(name).acquire()
                self.held[name] = lock
            return lock

    def holds(self, name):
        with self.mutex:
            return name in self.held

    def release(self, name):
        with self.mutex:
            lock = self.held.pop(name, None)
        if lock is not None:
            lock.release()

    @contextlib.contextmanager
    def holding(self, store, name):
        """NAME's lock for one operation: the session's own when it holds it, else taken and released."""
        if self.holds(name):
            yield
            return
        lock = store.lock(name).acquire()
        try:
            yield
        finally:
            lock.release()

    def names(self):
        with self.mutex:
            return list(self.held)


def check_unit(args):
    unit = get_str(args, "service", limit=256)
    if unit is not None and (not UNIT.match(unit) or unit.startswith("-")):
        raise RemoteError("bad_args", "service %s is not a systemd unit name" % shorten(unit, 80))
    return unit


def systemctl(fs):
    """The systemctl to run, or None (a simulated device never restarts the machine's services)."""
    override = os.environ.get("FIELDKIT_AGENT_SYSTEMCTL")
    if override:
        return override
    return shutil.which("systemctl") if fs.root == "/" else None


def restart_service(fs, unit, block=True):
    """``systemctl restart UNIT``: True when restarted, False when there is no unit or no systemd.
    ``block=False`` (``--no-block``) only queues the restart: the agent restarting its own unit."""
    exe = systemctl(fs) if unit else None
    if exe is None:
        return False
    try:
        cmd = [exe, "restart", unit] if block else [exe, "--no-block", "restart", unit]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=RESTART_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RemoteError("restart_failed", "systemctl restart %s did not finish within %.0f s" % (unit, RESTART_TIMEOUT_S))
    except OSError as exc:
        raise RemoteError("restart_failed", "cannot run %s: %s" % (exe, exc.strerror or exc))
    if proc.returncode == 0 or (not block and proc.returncode < 0):
        return True  # (a --no-block restart of the agent's own unit: its stop ends systemctl with the agent)
    why = (proc.stderr or proc.stdout or b"").decode("utf-8", "replace").strip()[-300:]
    if proc.returncode == 4 or any(w in why.lower() for w in PERMISSION_WORDS):
        raise RemoteError("no_permission", "the device refused to restart %s (%s). Fix either way: let the login "
                          "user manage it (add it to the group fieldkit, which a polkit rule allows to restart %s), "
                          "or set become = \"sudo\" in the device profile" % (unit, why or "access denied", unit))
    raise RemoteError("restart_failed", "systemctl restart %s failed (status %d): %s" % (unit, proc.returncode, why))


def restart_op(store, req):
    """``service_restart {"service"}``: restart the inference service (a checklist step, a technician's
    "restart it" after a change outside fieldkit). Journaled on the device."""
    unit = check_unit(req.args)
    if unit is None:
        raise RemoteError("bad_args", "name the service to restart (service: UNIT.service)")
    restarted = restart_service(store.fs, unit)
    store.journal("service.restart", {"service": unit, "restarted": restarted, "by": operator(req.args)})
    return {"service": unit, "restarted": restarted}


def _result(store, name, state, restarted):
    return {"name": name, "active": store.pointer(name, "current"), "previous": store.pointer(name, "previous"),
            "state": state, "restarted": restarted}


def activate(store, req, locks):
    args = req.args
    name = check_model_name(args.get("name"))
    version = check_version(args.get("version"))
    reason = get_str(args, "reason", "install", limit=20, choices=("install", "rollback"))
    unit = check_unit(args)
    by = operator(args)
    newly = not locks.holds(name)
    locks.hold(store, name)
    try:
        state = store.read_state(name)
        act = state.get("activation")
        if state["state"] == "pending" and act:
            raise RemoteError("pending", "an activation of %s %s is still pending; commit or revert it first"
                              % (name, act.get("target")))
        if version not in store.versions(name):
            raise RemoteError("version_not_installed", "%s %s is not installed on the device (installed: %s)"
                              % (name, version, ", ".join(store.versions(name)) or "none"))
        old = store.pointer(name, "current")
        if old == version:
            raise RemoteError("already_active", "%s %s is already the active version" % (name, version))
        statement, release = verify_version(store, name, version, req.check_cancel)
        sv = release["security_version"]
        if sv < state["floor"]:
            raise RemoteError("below_floor", "%s %s has security_version %d, below the device's floor %d: it is "
                              "never activated" % (name, version, sv, state["floor"]))
    except BaseException:
        if newly:
            locks.release(name)
        raise
    prev_previous = store.pointer(name, "previous")
    state["state"] = "pending"
    state["activation"] = {
        "step": "swap", "target": version, "previous": old, "prev_previous": prev_previous, "started": utc_now(),
        "by": by, "reason": reason, "service": unit, "security_version": sv, "digest": statement.digest,
        "signer": statement.signer.fingerprint, "pid": os.getpid(), "smoke": None,
    }
    store.add_history(state, "activate", version=version, previous=old, reason=reason, by=by)
    store.write_state(name, state)
    crash_point("activate:pending")
    store.journal("model.activate", {"name": name, "version": version, "previous": old, "reason": reason, "by": by,
                                     "digest": statement.digest, "signer": statement.signer.fingerprint,
                                     "service": unit})
    store.set_pointer(name, "current", version)
    crash_point("activate:current")
    if old is not None:
        store.set_pointer(name, "previous", old)
    crash_point("activate:previous")
    state["activation"]["step"] = "restart"
    store.write_state(name, state)
    crash_point("activate:restart")
    try:
        restarted = restart_service(store.fs, unit)
    except RemoteError as exc:
        revert_locked(store, name, "the service could not be restarted: " + exc.message, by, restart=False)
        locks.release(name)
        raise RemoteError(exc.code, exc.message + "; the activation was reverted (%s stays active)" % (old or "nothing"))
    state["activation"]["step"] = "trial"
    state["activation"]["restarted"] = restarted
    store.write_state(name, state)
    crash_point("activate:trial")
    return _result(store, name, "pending", restarted)


def record_smoke(store, name, version, result, locks):
    """Keep the smoke result with a pending activation of ``version`` (durably) and in the journal."""
    state = store.read_state(name)
    record = state["installed"].get(version)
    record = record if isinstance(record, dict) else {}
    store.journal("model.smoke", {"name": name, "version": version, "passed": result.get("passed"),
                                  "latency_ms": result.get("latency_ms"), "budget_ms": result.get("budget_ms"),
                                  "message": shorten(result.get("message") or "", 500),
                                  "digest": record.get("digest"), "signer": record.get("signer")})
    if not locks.holds(name):
        return
    act = state.get("activation")
    if state["state"] == "pending" and act and act.get("target") == version:
        act["smoke"] = {"passed": bool(result.get("passed")), "at": utc_now()}
        store.write_state(name, state)
        crash_point("smoke:recorded")


def _pending(store, name):
    state = store.read_state(name)
    act = state.get("activation")
    if state["state"] != "pending" or not act:
        active = store.pointer(name, "current")
        raise RemoteError("not_pending", "%s has no activation in progress (active: %s, state %s); to go back to the "
                          "previous version activate it (fieldkit rollback)" % (name, active or "none", state["state"]))
    return state, act


def commit(store, req, locks):
    name = check_model_name(req.args.get("name"))
    by = operator(req.args)
    with locks.holding(store, name):
        state, act = _pending(store, name)
        if act.get("step") != "trial":
            raise RemoteError("pending", "the activation of %s %s stopped at step %s; revert it"
                              % (name, act.get("target"), act.get("step")))
        if store.pointer(name, "current") != act["target"]:
            raise RemoteError("bad_state", "%s/current does not point at %s, the version being activated; revert it"
                              % (name, act["target"]))
        sv = act.get("security_version") if isinstance(act.get("security_version"), int) else 0
        state["floor"] = max(state["floor"], sv)
        state["state"] = "committed"
        state["activation"] = None
        state["committed"] = {"version": act["target"], "at": utc_now(), "by": by}
        store.add_history(state, "commit", version=act["target"], floor=state["floor"], by=by,
                          smoke=(act.get("smoke") or {}).get("passed"))
        store.write_state(name, state)
        crash_point("commit:done")
    locks.release(name)
    store.journal("model.commit", {"name": name, "version": act["target"], "floor": state["floor"], "by": by,
                                   "digest": act.get("digest"), "signer": act.get("signer"),
                                   "smoke": (act.get("smoke") or {}).get("passed")})
    return {"name": name, "active": act["target"], "floor": state["floor"], "state": "committed"}


def revert_locked(store, name, reason, by, restart=True, unit=None):
    """Undo the pending activation of ``name`` (its lock held): the same from any step, so it also
    finishes a revert that was itself interrupted. Returns whether the service was restarted."""
    state = store.read_state(name)
    act = state.get("activation")
    if not act:
        return False
    act["step"] = "revert"
    act["revert_reason"] = reason
    store.write_state(name, state)
    crash_point("revert:pending")
    store.clean_pointer_leftovers(name)
    store.set_pointer(name, "current", act.get("previous"))
    crash_point("revert:current")
    store.set_pointer(name, "previous", act.get("prev_previous"))
    restarted = False
    restart_error = None
    if restart:
        try:
            restarted = restart_service(store.fs, unit or act.get("service"))
        except RemoteError as exc:
            restart_error = exc
    state["state"] = "reverted"
    state["activation"] = None
    store.add_history(state, "revert", version=act.get("target"), active=act.get("previous"), reason=reason, by=by)
    store.write_state(name, state)
    crash_point("revert:done")
    store.journal("model.revert", {"name": name, "version": act.get("target"), "active": act.get("previous"),
                                   "reason": reason, "by": by, "digest": act.get("digest"),
                                   "signer": act.get("signer"), "restarted": restarted})
    if restart_error is not None:
        raise RemoteError(restart_error.code, restart_error.message + "; the model was switched back to %s, but the "
                          "service still runs the reverted one until it restarts" % (act.get("previous") or "nothing"))
    return restarted


def revert(store, req, locks):
    args = req.args
    name = check_model_name(args.get("name"))
    reason = get_str(args, "reason", "reverted by the operator", limit=500)
    unit = check_unit(args)
    by = operator(args)
    with locks.holding(store, name):
        _pending(store, name)
        try:
            restarted = revert_locked(store, name, reason, by, unit=unit)
        finally:
            locks.release(name)
    return _result(store, name, "reverted", restarted)


def end_session(store, locks, log):
    """A session ends: revert what it left pending (the laptop never committed), release its locks."""
    for name in locks.names():
        try:
            state = store.read_state(name)
            if state["state"] == "pending" and state.get("activation"):
                revert_locked(store, name, "the session ended before the commit", "agent")
        except (RemoteError, OSError) as exc:
            log("could not revert the pending activation of %s: %s" % (name, getattr(exc, "message", exc)))
        finally:
            locks.release(name)


def recover(store, locks=None, restart=True):
    """Finish or undo every interrupted activation: ``[{"name", "action", "active"}]``."""
    out = []
    for name in store.names():
        if locks is not None and locks.holds(name):
            continue  # this session's own activation in progress
        lock = store.lock(name)
        try:
            if not lock.try_acquire():
                out.append({"name": name, "action": "skipped_locked", "active": store.pointer(name, "current")})
                continue
        except (RemoteError, OSError) as exc:
            out.append({"name": name, "action": "error", "active": store.pointer(name, "current"),
                        "message": getattr(exc, "message", str(exc))})
            continue
        try:
            action = _recover_one(store, name, restart)
        except (RemoteError, OSError) as exc:
            action = "error"
            out.append({"name": name, "action": action, "active": store.pointer(name, "current"),
                        "message": getattr(exc, "message", str(exc))})
            action = None
        finally:
            lock.release()
        if action:
            out.append({"name": name, "action": action, "active": store.pointer(name, "current")})
    return out


def _recover_one(store, name, restart):
    top = store.model_dir(name)
    for n in sorted(os.listdir(top)):
        if n.startswith(".trash-") or n.startswith(".install-"):
            shutil.rmtree(os.path.join(top, n), ignore_errors=True)
    store.clean_pointer_leftovers(name)
    state = store.read_state(name)
    if state["state"] == "pending" and state.get("activation"):
        revert_locked(store, name, "recovery: the activation was interrupted before its commit", "recovery",
                      restart=restart)
        return "reverted"
    current = store.pointer(name, "current")
    if current is not None and not os.path.isdir(store.version_path(name, current)):
        return "broken_current"
    return None
