"""The ``identity`` result: what hardware and system a device says it is (fieldkit/agent/identity.py).

Everything is optional: an older image lacks files, a container has no DMI, a hostile device sends
little. Strings are short (names); lists are bounded."""

from typing import Annotated

from pydantic import Field

from fieldkit.wire.types import Count, Int, Name, Text, WireModel

__all__ = ["RaspberryPiRevision", "JetsonRelease", "IdentityResult"]


class RaspberryPiRevision(WireModel):
    """A Raspberry Pi revision code decoded (new-style bit fields or the old-style table)."""

    code: Name
    style: Name | None = None
    """``new`` (bit fields) or ``old`` (0002..0015)."""
    type: Name | None = None
    """Board type as the revision-code table writes it: ``4B``, ``5``, ``3B+``, ``CM4`` ..."""
    model: Name | None = None
    """The board's name: ``Raspberry Pi 4 Model B``."""
    revision: Name | None = None
    """PCB revision: ``1.5``."""
    memory_mb: Count | None = None
    manufacturer: Name | None = None
    processor: Name | None = None
    warranty_voided: bool | None = None
    overvoltage_allowed: bool | None = None
    otp_program_allowed: bool | None = None
    otp_read_allowed: bool | None = None


class JetsonRelease(WireModel):
    """NVIDIA Jetson: the L4T (Jetson Linux) release, JetPack where it maps, and the power mode."""

    l4t: Name | None = None
    """``36.4.4`` from ``/etc/nv_tegra_release``."""
    jetpack: Name | None = None
    """``6.2.1``, or None when this L4T release is not in the agent's table."""
    board: Name | None = None
    release_line: Text | None = None
    power_mode: Name | None = None
    """``nvpmodel -q``: ``MAXN``, ``15W`` ... (None without nvpmodel)."""
    power_mode_id: Int | None = None


class IdentityResult(WireModel):
    model: Name | None = None
    """The board or system: ``Raspberry Pi 4 Model B Rev 1.5``, ``NVIDIA Jetson Orin Nano Developer Kit``,
    ``Advantech UNO-127``."""
    model_source: Name | None = None
    """``device-tree``, ``dmi`` or ``cpuinfo``."""
    vendor: Name | None = None
    """DMI ``sys_vendor`` (x86)."""
    product: Name | None = None
    """DMI ``product_name`` (x86)."""
    board: Name | None = None
    compatible: Annotated[list[Name], Field(max_length=16)] = []
    """Device-tree ``compatible``, most specific first: ``raspberrypi,4-model-b``, ``brcm,bcm2711``."""
    soc: Name | None = None
    cpu: Name | None = None
    cpu_cores: Count | None = None
    machine: Name | None = None
    memory_bytes: Count | None = None
    """``MemTotal``: what the kernel manages, a little less than what is fitted."""
    serial: Name | None = None
    serial_source: Name | None = None
    revision: Name | None = None
    """cpuinfo ``Revision`` as the device printed it."""
    raspberry_pi: RaspberryPiRevision | None = None
    jetson: JetsonRelease | None = None
    virtual: bool | None = None
    """A virtual machine (hypervisor flag or a hypervisor's DMI vendor); None when unknown."""
    os: Name | None = None
    kernel: Name | None = None
    hostname: Name | None = None
    python: Name | None = None
    sysroot: Text | None = None
    """Set when the agent read a tree other than ``/`` (tests, simulations)."""
