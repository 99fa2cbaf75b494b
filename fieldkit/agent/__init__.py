"""The on-device agent. Stdlib-only core that runs on Python 3.6 and later.

Optional modules (psutil, onnxruntime, numpy, cryptography) are used only when present, and the
handshake says which are. This package is shipped to devices as a zipapp (see fieldkit.link.zipapp).
"""

AGENT_VERSION = "0.2.0"
PROTOCOL_VERSION = 1
