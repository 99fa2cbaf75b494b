"""fieldkit: field technician's toolkit for edge ML devices (core package, no UI imports)."""

from fieldkit.agent import AGENT_VERSION as __version__

__all__ = ["__version__"]
