"""What hardware a device is, in words, and which bundled profile judges it.

The agent's ``identity`` operation reports the raw facts (:class:`fieldkit.wire.IdentityResult`);
this module turns them into what a technician reads and decides with:

* :func:`describe` — "Raspberry Pi 4 Model B Rev 1.5, 4 GB";
* :func:`suggest_profile` — the bundled profile that fits (``raspberry-pi-4``, ``raspberry-pi-5``,
  ``jetson-orin-nano``, ``x86-ipc``; ``generic-linux`` when nothing does) and why;
* :func:`mismatch` — "profile raspberry-pi-5, but this is a Raspberry Pi 4 Model B Rev 1.5, 4 GB",
  the warning health, the fleet and the device screen show.

Only hardware that is positively identified is ever called a mismatch: a virtual machine, a
container or a board nothing could be read from may stand in for a device (simulations, tests),
and a profile the technician wrote is theirs to judge.
"""

from __future__ import annotations

from typing import Any, Iterable

from fieldkit.profiles import DEFAULT_PROFILE
from fieldkit.wire import IdentityResult

__all__ = ["BOARD_PROFILES", "describe", "family", "memory_text", "mismatch", "suggest_profile"]

BOARD_PROFILES = {
    "raspberry-pi-4": "raspberry-pi",
    "raspberry-pi-5": "raspberry-pi",
    "jetson-orin-nano": "jetson",
    "x86-ipc": "x86",
}
"""Bundled profiles written for one kind of hardware -> its family. generic-linux is for any."""

_PI4_TYPES = {"4B", "400", "CM4", "CM4S"}
_PI5_TYPES = {"5", "500/500+", "CM5", "CM5 Lite"}
_ORIN_NANO_MODULES = ("p3767-0003", "p3767-0004", "p3767-0005")
_NOMINAL_GIB = (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def memory_text(ident: IdentityResult) -> str | None:
    """Fitted RAM: the Raspberry Pi's revision code says it exactly; otherwise ``MemTotal`` (what
    the kernel manages, a little less) rounded up to the module size it comes from."""
    pi = ident.raspberry_pi
    if pi is not None and pi.memory_mb:
        mb = pi.memory_mb
        return f"{mb // 1024} GB" if mb >= 1024 else f"{mb} MB"
    if not ident.memory_bytes:
        return None
    gib = ident.memory_bytes / 2**30
    for size in _NOMINAL_GIB:
        if gib <= size:
            if gib >= 0.8 * size:  # kernel, firmware and GPU carve-outs take up to ~20 %
                return f"{size:g} GB" if size >= 1 else f"{int(size * 1024)} MB"
            break
    return f"{gib:.1f} GB"


def _is_x86(ident: IdentityResult) -> bool:
    if ident.machine in ("x86_64", "i686", "i586", "i386", "amd64"):
        return True
    if ident.compatible:  # a device tree: an ARM or RISC-V board
        return False
    cpu = (ident.cpu or "").lower()
    return bool(ident.vendor or ident.product) or "intel" in cpu or "amd " in cpu or cpu.startswith("amd")


def _pi_generation(ident: IdentityResult) -> str | None:
    """``"4"``, ``"5"``, ``"other"`` for any other Raspberry Pi, None when it is not one."""
    pi = ident.raspberry_pi
    compat = set(ident.compatible)
    model = ident.model or ""
    if pi is not None and pi.type:
        if pi.type in _PI4_TYPES:
            return "4"
        if pi.type in _PI5_TYPES:
            return "5"
        return "other"
    if compat & {"raspberrypi,4-model-b", "raspberrypi,400", "raspberrypi,4-compute-module",
                 "raspberrypi,4s-compute-module"} or "brcm,bcm2711" in compat and any(
                     c.startswith("raspberrypi,") for c in compat):
        return "4"
    if compat & {"raspberrypi,5-model-b", "raspberrypi,500", "raspberrypi,5-compute-module"} or (
            "brcm,bcm2712" in compat and any(c.startswith("raspberrypi,") for c in compat)):
        return "5"
    if model.startswith(("Raspberry Pi 4", "Raspberry Pi Compute Module 4", "Raspberry Pi 400")):
        return "4"
    if model.startswith(("Raspberry Pi 5", "Raspberry Pi Compute Module 5", "Raspberry Pi 500")):
        return "5"
    if model.startswith("Raspberry Pi") or any(c.startswith("raspberrypi,") for c in compat):
        return "other"
    return None


def _is_jetson(ident: IdentityResult) -> bool:
    return (ident.jetson is not None or "NVIDIA Jetson" in (ident.model or "")
            or any(c.startswith("nvidia,tegra") for c in ident.compatible))


def _is_orin_nano(ident: IdentityResult) -> bool:
    if "Orin Nano" in (ident.model or ""):
        return True
    return any(c.endswith(_ORIN_NANO_MODULES) for c in ident.compatible)


def family(ident: IdentityResult) -> str | None:
    """``raspberry-pi``, ``jetson``, ``x86`` (real hardware), ``virtual``, or None (nothing known)."""
    if _pi_generation(ident) is not None:
        return "raspberry-pi"
    if _is_jetson(ident):
        return "jetson"
    if ident.virtual:
        return "virtual"
    if _is_x86(ident) and (ident.vendor or ident.product):
        return "x86"
    return None


def describe(ident: IdentityResult) -> str:
    """One line a technician recognises the device by: model and RAM (Jetson: and JetPack)."""
    name = ident.model
    if not name:
        pi = ident.raspberry_pi
        if pi is not None and pi.model:
            name = f"{pi.model} Rev {pi.revision}" if pi.revision else pi.model
    if not name:
        what = "virtual machine" if ident.virtual else "unidentified device"
        inner = ", ".join(x for x in (ident.machine, ident.cpu) if x)
        name = f"{what} ({inner})" if inner else what
    parts = [name]
    mem = memory_text(ident)
    if mem:
        parts.append(mem)
    jetson = ident.jetson
    if jetson is not None and (jetson.jetpack or jetson.l4t):
        parts.append(f"JetPack {jetson.jetpack} (L4T {jetson.l4t})" if jetson.jetpack else f"L4T {jetson.l4t}")
    return ", ".join(parts)


def _article(text: str) -> str:
    """"a" or "an" as the text is spoken: "an Advantech", "an NVIDIA", "a Raspberry Pi"."""
    word = text.split(" ", 1)[0]
    if word[:1].lower() in "aeiou":
        return "an"
    if len(word) > 1 and word.isupper() and word[0] in "FHLMNRSX":  # spelt out: "an N-V-..."
        return "an"
    return "a"


def _profile_names(profiles: Iterable[Any]) -> list[str]:
    """Names from Profile / ProfileInfo objects or plain strings."""
    return [str(getattr(p, "name", p)) for p in profiles]


def _suggest(ident: IdentityResult) -> tuple[str, str]:
    """(bundled profile, why) for this hardware, regardless of which profiles exist."""
    gen = _pi_generation(ident)
    pi = ident.raspberry_pi
    what = describe(ident)
    if gen in ("4", "5"):
        soc = "BCM2711" if gen == "4" else "BCM2712"
        evidence = f"revision code {pi.code}" if pi is not None else "device tree " + ", ".join(ident.compatible[:2])
        return f"raspberry-pi-{gen}", f"{what} ({evidence}): a Raspberry Pi {gen} family board, {soc}"
    if gen == "other":
        return DEFAULT_PROFILE, (f"{what}: an older Raspberry Pi with no bundled profile of its own; "
                                 f"{DEFAULT_PROFILE} has conservative limits")
    if _is_jetson(ident):
        module = next((c for c in ident.compatible if c.startswith("nvidia,p3767")), None)
        if _is_orin_nano(ident):
            return "jetson-orin-nano", f"{what}" + (f" ({module})" if module else "") + ": an NVIDIA Jetson Orin Nano"
        return DEFAULT_PROFILE, (f"{what}: an NVIDIA Jetson other than the Orin Nano (the only Jetson with a "
                                 f"bundled profile); {DEFAULT_PROFILE} has conservative limits")
    if ident.virtual:
        return DEFAULT_PROFILE, f"{what}: a virtual machine, not a device with a hardware profile"
    if _is_x86(ident) and (ident.vendor or ident.product):
        cpu = f", {ident.cpu}" if ident.cpu else ""
        return "x86-ipc", f"{what} (DMI {ident.vendor or '?'} {ident.product or '?'}{cpu}): an x86 PC"
    return DEFAULT_PROFILE, (f"{what}: the device did not say what hardware it is (no device-tree model, "
                             f"no DMI); {DEFAULT_PROFILE} fits any Linux device")


def suggest_profile(ident: IdentityResult, profiles: Iterable[Any] = ()) -> tuple[str, str]:
    """The profile among ``profiles`` (Profile objects or names; empty: the bundled ones) that fits
    this hardware, and why in one sentence. ``generic-linux`` when nothing more specific fits."""
    name, reason = _suggest(ident)
    available = _profile_names(profiles)
    if available and name not in available:
        return DEFAULT_PROFILE, f"{reason}; no {name} profile is installed here"
    return name, reason


def mismatch(profile_name: str, ident: IdentityResult | None) -> str | None:
    """Why ``profile_name`` does not fit this hardware, or None when it fits or nothing can be said.

    Only bundled board profiles are checked, and only against hardware that was positively
    identified (a Raspberry Pi, a Jetson, a bare-metal x86 PC)."""
    if ident is None or profile_name not in BOARD_PROFILES:
        return None
    fam = family(ident)
    if fam in (None, "virtual"):
        return None
    suggested, _ = _suggest(ident)
    if suggested == profile_name:
        return None
    what = describe(ident)
    text = f"profile {profile_name}, but this is {_article(what)} {what}"
    if suggested != DEFAULT_PROFILE:
        return text + f"; the {suggested} profile fits it"
    return text + f"; no bundled profile fits it, {DEFAULT_PROFILE} is the safe choice"


def identify(home: Any, name: str, target: str, *, timeout: float = 5.0) -> IdentityResult | None:
    """Connect to ``target`` briefly (a connect like any other: journaled, host key checked) and
    ask what hardware it is; None from an agent older than the ``identity`` operation. Raises
    FieldkitError (ConnectError, HostKeyError, IdentityMissing, DeviceError) when it cannot."""
    from fieldkit.devices import ResolvedDevice, open_session
    from fieldkit.profiles import get_profile

    dev = ResolvedDevice(name, target, get_profile(DEFAULT_PROFILE, home))
    with open_session(dev, home, timeout=timeout, dead_after_s=max(timeout, 3.0), witness=False) as session:
        return session.identity(timeout=timeout)
