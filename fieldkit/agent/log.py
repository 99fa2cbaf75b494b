"""The agent's log: one line per event on stderr (the journal is for what was done, this for why
something could not be). Never raises: a closed stderr must not end an operation."""

import sys


def log(msg):
    try:
        sys.stderr.write("fieldkit-agent: %s\n" % msg)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
