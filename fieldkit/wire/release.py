"""Models of the signed-release operations (docs/releases.md): trust anchors and operator keys,
operator authentication over serial, staging, install, activation, smoke test, commit / revert,
the model list, verification, removal, recovery."""

from typing import Annotated, Literal

from pydantic import Field

from fieldkit.wire.types import MAX_ITEMS, MAX_ZONES, Count, Name, Number, Sha256, Text, WireModel

__all__ = [
    "Anchor", "AnchorsListResult", "AnchorAddResult", "AnchorsRemoveResult", "StagedFile", "StageOpenResult",
    "ReleaseInstallResult", "ActivateResult", "SmokeOutput", "SmokeResult", "CommitResult", "RevertResult",
    "InstalledModel", "ModelsListResult", "ModelCheck", "ModelsVerifyResult", "ModelRemoveResult",
    "Recovered", "RecoverResult", "ServiceRestartResult", "AuthChallengeResult", "AuthResponseResult", "AUTH_PURPOSE",
    "RELEASE_RESULT_MODELS",
]

State = Literal["committed", "pending", "reverted"]
Fingerprint = Annotated[str, Field(strict=True, pattern=r"^SHA256:[A-Za-z0-9+/]{43}$")]
"""``SHA256:`` + unpadded base64 of the sha256 of the DER public key (as SSH and the journal write it)."""
Hint = Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$")]
"""model_signing's key hint: hex sha256 of the public key's PEM bytes."""


class Anchor(WireModel):
    fingerprint: Fingerprint
    hint: Hint | None = None
    file: Name
    pem: Annotated[str, Field(strict=True, max_length=4096)] | None = None
    """The public key itself (public data): the laptop checks a release against it first."""


KeyKind = Literal["release", "operator"]


class AnchorsListResult(WireModel):
    dir: Text | None = None
    keys: Annotated[list[Anchor], Field(max_length=MAX_ZONES)] = []
    """Release keys (``etc/fieldkit/trust``)."""
    operators_dir: Text | None = None
    operator_keys: Annotated[list[Anchor], Field(max_length=MAX_ZONES)] = []
    """Operator keys allowed to change the device over serial (``etc/fieldkit/operators``); empty
    from older agents."""


class AnchorAddResult(Anchor):
    added: bool
    kind: KeyKind = "release"


class AnchorsRemoveResult(WireModel):
    removed: Annotated[list[Name], Field(max_length=MAX_ZONES)] = []
    kind: KeyKind = "release"


AUTH_PURPOSE = "fieldkit-operator-auth/1"


class AuthChallengeResult(WireModel):
    """``auth_challenge``: what the operator signs (with ``operator``: the signing key's fingerprint),
    see fieldkit/agent/operators.py and docs/releases.md."""

    purpose: Literal["fieldkit-operator-auth/1"]
    nonce: Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$")]
    session: Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{32}$")]
    pid: Count
    hostname: Name
    root: Text
    expires_in: Number | None = None
    required: bool = False
    """The session must authenticate before changing the device (serial)."""
    operators: Count | None = None
    """How many operator keys the device accepts."""


class AuthResponseResult(WireModel):
    authenticated: bool
    fingerprint: Fingerprint
    file: Name | None = None
    session: Name | None = None


class StagedFile(WireModel):
    size: Count | None = None
    partial_size: Count = 0


class StageOpenResult(WireModel):
    stage: Name
    dir: Text
    """Device path the laptop uploads into (``put``)."""
    files: Annotated[dict[Text, StagedFile], Field(max_length=MAX_ITEMS)] = {}


class ReleaseInstallResult(WireModel):
    name: Name
    version: Name
    security_version: Count
    digest: Sha256
    signer: Fingerprint
    dir: Text | None = None
    already_installed: bool = False
    active: Name | None = None
    """The version active before this install (None: none yet)."""
    floor: Count = 0
    smoke: bool = False
    """The release carries a smoke set."""


class ActivateResult(WireModel):
    name: Name
    active: Name
    previous: Name | None = None
    state: State
    restarted: bool = False


class SmokeOutput(WireModel):
    name: Name
    max_abs_diff: Number | None = None
    max_rel_diff: Number | None = None
    ok: bool


class SmokeResult(WireModel):
    passed: bool
    message: Text = ""
    outputs: Annotated[list[SmokeOutput], Field(max_length=MAX_ZONES)] = []
    latency_ms: Number | None = None
    budget_ms: Number | None = None


class CommitResult(WireModel):
    name: Name
    active: Name
    floor: Count
    state: State


class RevertResult(WireModel):
    name: Name
    active: Name | None = None
    previous: Name | None = None
    state: State
    restarted: bool = False


class InstalledModel(WireModel):
    name: Name
    active: Name | None = None
    previous: Name | None = None
    installed: Annotated[list[Name], Field(max_length=MAX_ITEMS)] = []
    floor: Count = 0
    state: State = "committed"
    signer: Fingerprint | None = None
    digest: Sha256 | None = None
    """The active release's digest (the signature's subject), as installed; None from older agents."""
    installed_at: Name | None = None
    installed_by: Name | None = None


class ModelsListResult(WireModel):
    models: Annotated[list[InstalledModel], Field(max_length=MAX_ITEMS)] = []


class ModelCheck(WireModel):
    name: Name
    version: Name
    ok: bool
    problems: Annotated[list[Text], Field(max_length=MAX_ITEMS)] = []


class ModelsVerifyResult(WireModel):
    models: Annotated[list[ModelCheck], Field(max_length=MAX_ITEMS)] = []


class ModelRemoveResult(WireModel):
    removed: Name


class ServiceRestartResult(WireModel):
    service: Name
    restarted: bool
    """False when the device has no systemd to restart it with (a simulated device)."""


class Recovered(WireModel):
    name: Name
    action: Name
    active: Name | None = None


class RecoverResult(WireModel):
    recovered: Annotated[list[Recovered], Field(max_length=MAX_ITEMS)] = []


RELEASE_RESULT_MODELS: dict[str, type[WireModel]] = {
    "anchors_list": AnchorsListResult,
    "anchors_add": AnchorAddResult,
    "anchors_remove": AnchorsRemoveResult,
    "stage_open": StageOpenResult,
    "release_install": ReleaseInstallResult,
    "model_activate": ActivateResult,
    "model_smoke": SmokeResult,
    "model_commit": CommitResult,
    "model_revert": RevertResult,
    "models_list": ModelsListResult,
    "models_verify": ModelsVerifyResult,
    "model_remove": ModelRemoveResult,
    "recover": RecoverResult,
    "service_restart": ServiceRestartResult,
    "auth_challenge": AuthChallengeResult,
    "auth_response": AuthResponseResult,
}
