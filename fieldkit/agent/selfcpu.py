"""CPU time of fieldkit's own processes on the device (stdlib only, Python 3.6).

A health check samples ``/proc/stat`` over a short window; whatever fieldkit itself does in that
window (this agent's threads, its children such as a benchmark, another session's agent starting
up) would otherwise read as the device's load. :func:`snapshot` adds up the CPU ticks of every
fieldkit process tree; :func:`ticks_between` turns two snapshots into the ticks fieldkit used in
between, which :func:`fieldkit.agent.probes.cpu` subtracts from the device's busy ticks.

A fieldkit process is this process, any process started as the agent
(``python .../agent-<hash>.pyz serve|bench|smoke``, ``python -m fieldkit.agent ...``,
``fieldkit-agent ...``) and fieldkit itself (``fieldkit ...``: a simulated device shares the laptop);
its tree is it and all its descendants. Ticks are ``utime + stime +
cutime + cstime`` (fields 14-17 of ``/proc/PID/stat``, in ``SC_CLK_TCK`` units, the same as
``/proc/stat``), so a child reaped inside the window moves from its own line into its parent's
and the tree's total stays continuous.
"""

import os

AGENT_COMMANDS = ("serve", "bench", "smoke", "recover")
MAX_DEPTH = 64  # ppid chain walk bound (a loop in a hostile /proc must not hang the agent)


def clock_ticks():
    """Ticks per second of /proc's CPU times (USER_HZ, usually 100)."""
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def _stat(proc, pid):
    """(ppid, ticks, starttime, comm) of one process, or None when it is gone or unreadable."""
    try:
        with open(os.path.join(proc, pid, "stat"), "rb") as fh:
            data = fh.read(4096)
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields after it start after the *last* ')'
    start, end = data.find(b"("), data.rfind(b")")
    if start < 0 or end < start:
        return None
    fields = data[end + 2:].split()
    try:
        # fields[0] is field 3 (state): ppid is field 4, utime..cstime 14-17, starttime 22
        ppid = int(fields[1])
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        starttime = int(fields[19])
    except (IndexError, ValueError):
        return None
    return ppid, ticks, starttime, data[start + 1:end].decode("utf-8", "replace")


def is_fieldkit_cmdline(argv):
    """True for the command line of a fieldkit process: the agent (serve, bench, smoke, recover)
    or fieldkit itself (``fieldkit ...``, ``python -m fieldkit ...``: a simulated device shares
    the laptop's CPU, and a technician may run fieldkit on the device)."""
    args = list(argv or [])
    i, module = 0, False
    if args and os.path.basename(args[0]).startswith("python"):  # the interpreter and its options
        i = 1
        while i < len(args) and args[i].startswith("-"):
            if args[i] == "-m":
                module, i = True, i + 1
                break
            if args[i] == "-c":
                return False
            i += 2 if args[i] in ("-X", "-W") else 1
    if i >= len(args):
        return False
    entry, rest = args[i], args[i + 1:i + 2]
    base = os.path.basename(entry)
    if (module and entry == "fieldkit") or (not module and base == "fieldkit"):
        return True
    agent = (entry == "fieldkit.agent") if module else (
        base == "fieldkit-agent" or (base.startswith("agent-") and base.endswith(".pyz")))
    return agent and bool(rest) and rest[0] in AGENT_COMMANDS


def _cmdline(proc, pid):
    try:
        with open(os.path.join(proc, pid, "cmdline"), "rb") as fh:
            raw = fh.read(8192)
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def snapshot(proc="/proc", self_pid=None):
    """``{(root pid, starttime): tree ticks}`` for every fieldkit process tree now, or None
    when ``proc`` cannot be listed (no /proc: nothing can be excluded)."""
    self_pid = os.getpid() if self_pid is None else self_pid
    try:
        names = [n for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return None
    table = {}
    for name in names:
        st = _stat(proc, name)
        if st is not None:
            table[int(name)] = st
    marked = set()
    for pid, (_ppid, _ticks, _start, comm) in table.items():
        if pid == self_pid:
            marked.add(pid)
        elif comm.startswith("python") or comm.startswith("fieldkit"):
            if is_fieldkit_cmdline(_cmdline(proc, str(pid))):
                marked.add(pid)
    # every process belongs to the tree of its highest marked ancestor (or to none)
    root_of = {}
    for pid in table:
        root, cur, depth = None, pid, 0
        while cur in table and depth < MAX_DEPTH:
            if cur in marked:
                root = cur
            parent = table[cur][0]
            if parent == cur:
                break
            cur, depth = parent, depth + 1
        if root is not None:
            root_of[pid] = root
    trees = {}
    for pid, root in root_of.items():
        key = (root, table[root][2])
        trees[key] = trees.get(key, 0) + table[pid][1]
    return trees


def ticks_between(before, after):
    """CPU ticks fieldkit's trees used between two snapshots, and how many trees that was.

    A tree in both counts its growth (never below zero: an orphaned grandchild leaves its tree);
    a tree that started in between counts all its ticks; a tree that ended in between took its
    last ticks with it (it is not counted)."""
    if before is None or after is None:
        return 0, 0
    total = 0
    for key, ticks in after.items():
        total += max(0, ticks - before.get(key, 0))
    return total, len(after)
