"""Models of the operations that replace the agent installed on a device (fieldkit/agent/upgrade.py,
docs/releases.md "Upgrading the installed agent")."""

from typing import Annotated, Literal

from pydantic import Field

from fieldkit.wire.types import Count, Name, Number, Sha256, Text, WireModel

__all__ = ["AgentBuild", "AgentUpgradeState", "AgentUpgradeStatusResult", "AgentUpgradeResult",
           "AgentUpgradeConfirmResult", "AGENT_UPGRADE_RESULT_MODELS"]

Version = Annotated[str, Field(strict=True, min_length=1, max_length=64, pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_~-]*$")]


class AgentBuild(WireModel):
    """One agent zipapp: the version it reports and the sha256 of the file."""

    version: Version
    sha256: Sha256


class AgentUpgradeState(WireModel):
    """The device's upgrade state (``fieldkit-agent.pyz.upgrade.json`` beside the installed agent)."""

    state: Literal["pending", "committed", "reverted"]
    step: Literal["staged", "trial", "confirming"] | None = None
    """While pending: uploaded and checked, running on trial under the old agent, being installed."""
    old: AgentBuild
    new: AgentBuild
    tries: Count | None = None
    trial_s: Number | None = None
    unit: Name | None = None
    by: Text | None = None
    reason: Text | None = None
    """Why it was reverted."""
    started: Name | None = None
    committed: Name | None = None
    reverted: Name | None = None


class AgentUpgradeStatusResult(WireModel):
    version: Version
    sha256: Sha256 | None = None
    """Of the running agent's zipapp (None: it runs from a source tree)."""
    running: Text | None = None
    installed: Text
    installed_sha256: Sha256 | None = None
    previous: Text | None = None
    unit: Name | None = None
    trial: bool = False
    """This agent is the new one on trial (the laptop confirms it)."""
    upgradable: bool
    code: Name | None = None
    reason: Text | None = None
    """Why an upgrade would be refused (a technician's sentence)."""
    state: Literal["pending", "committed", "reverted"] | None = None
    upgrade: AgentUpgradeState | None = None
    staging: Text | None = None
    """Where to upload the agent whose sha256 was asked about."""


class AgentUpgradeResult(WireModel):
    state: Literal["pending"]
    old: AgentBuild
    new: AgentBuild
    unit: Name | None = None
    trial_s: Number
    installed: Text
    staged: Text


class AgentUpgradeConfirmResult(WireModel):
    state: Literal["committed"]
    version: Version
    sha256: Sha256
    old: AgentBuild
    installed: Text
    previous: Text | None = None


AGENT_UPGRADE_RESULT_MODELS: dict[str, type[WireModel]] = {
    "agent_upgrade_status": AgentUpgradeStatusResult,
    "agent_upgrade": AgentUpgradeResult,
    "agent_upgrade_confirm": AgentUpgradeConfirmResult,
}
