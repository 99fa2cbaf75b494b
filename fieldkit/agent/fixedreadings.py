"""Fixed readings: a test hook that makes ``health`` answer the same numbers every time.

``FIELDKIT_AGENT_READINGS=PATH`` (relative to the device root, or absolute) names a JSON document
shaped like :func:`fieldkit.agent.probes.health`'s answer. While it is set, the agent answers
``health`` from that file instead of measuring: snapshot tests and screenshots need a device whose
readings do not move with the load of the machine the simulation runs on. The agent's own block
(version, protocol, pid, root) and ``time`` stay real. It is a variable of the agent's environment,
so nothing on a device's disk can turn it on. Stdlib only, Python 3.6.
"""

import json
import os
import time

from fieldkit.agent import AGENT_VERSION, PROTOCOL_VERSION
from fieldkit.agent.protocol import RemoteError

ENV = "FIELDKIT_AGENT_READINGS"
MAX_BYTES = 256 * 1024


def fixed_readings(root):
    """The fixed health document when the hook is set, else None. A file that cannot be used is a
    device error naming it (never a traceback, never made-up numbers)."""
    name = os.environ.get(ENV)
    if not name:
        return None
    path = os.path.join(root, name)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RemoteError("fixed_readings", "%s names %s, which cannot be read: %s" % (ENV, path, exc))
    if len(data) > MAX_BYTES:
        raise RemoteError("fixed_readings", "%s: %s is larger than %d bytes" % (ENV, path, MAX_BYTES))
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RemoteError("fixed_readings", "%s: %s is not JSON: %s" % (ENV, path, exc))
    if not isinstance(doc, dict):
        raise RemoteError("fixed_readings", "%s: %s holds %s, not an object of readings"
                          % (ENV, path, type(doc).__name__))
    doc["time"] = time.time()
    doc["agent"] = {"version": AGENT_VERSION, "protocol": PROTOCOL_VERSION, "pid": os.getpid(), "root": root}
    return doc
