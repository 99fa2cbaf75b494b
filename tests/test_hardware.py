"""Knowing the hardware: the agent's ``identity`` on public samples of real devices' files (a Pi 4, a
Pi 5, a Jetson Orin Nano, an x86 IPC, an old Pi; tests/fixtures/hardware/*/SOURCE.md says where each
came from), the Raspberry Pi revision codes, the profile fieldkit suggests and the mismatch warning in
health, the fleet and the device screen, ``devices add`` without ``--profile``, and hostile files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import run_cli, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldkit import hardware, wire
from fieldkit.agent import identity as agent_identity
from fieldkit.agent.identity import decode_pi_revision, parse_cpuinfo, parse_nv_tegra_release, parse_nvpmodel
from fieldkit.locations import Home

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hardware"
BOARDS = ("raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "x86-ipc")

EXPECTED = {
    "raspberry-pi-4": dict(model="Raspberry Pi 4 Model B Rev 1.5", soc="BCM2711", cpu="Cortex-A72", cores=4,
                           serial="100000004a4f5b8c", profile="raspberry-pi-4", os="Debian GNU/Linux 12 (bookworm)",
                           describe="Raspberry Pi 4 Model B Rev 1.5, 4 GB"),
    "raspberry-pi-5": dict(model="Raspberry Pi 5 Model B Rev 1.0", soc="BCM2712", cpu="Cortex-A76", cores=4,
                           serial="8fd7c3a1e2b4d5f6", profile="raspberry-pi-5", os="Debian GNU/Linux 12 (bookworm)",
                           describe="Raspberry Pi 5 Model B Rev 1.0, 8 GB"),
    "jetson-orin-nano": dict(model="NVIDIA Jetson Orin Nano Developer Kit", soc="tegra234", cpu="Cortex-A78AE",
                             cores=6, serial="1421722061767", profile="jetson-orin-nano", os="Ubuntu 22.04.5 LTS",
                             describe="NVIDIA Jetson Orin Nano Developer Kit, 8 GB, JetPack 6.2.1 (L4T 36.4.4)"),
    "x86-ipc": dict(model="Advantech UNO-127", soc=None, cpu="Intel Atom(R) x6413E Processor @ 1.50GHz", cores=4,
                    serial=None, profile="x86-ipc", os="Ubuntu 22.04.4 LTS", describe="Advantech UNO-127, 4 GB"),
}


def ident_of(root: Path | str) -> wire.IdentityResult:
    return wire.parse_result("identity", agent_identity.identity(str(root)), device="fixture")


# ---- the agent operation on each fixture tree, through the real agent ------------------------------------
@pytest.mark.parametrize("board", BOARDS)
def test_identity_of_each_board_through_the_real_agent(board: str, home: Home, device_root: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fieldkit.devices import open_session

    monkeypatch.setenv("FIELDKIT_AGENT_SYSROOT", str(FIXTURES / board))
    want = EXPECTED[board]
    with open_session(f"local:{device_root}", home, witness=False) as session:
        assert "identity" in session.hello.ops
        ident = session.identity()
        assert session.identity() is ident  # asked once per session
    assert (ident.model, ident.soc, ident.cpu, ident.cpu_cores) == (want["model"], want["soc"], want["cpu"], want["cores"])
    assert (ident.serial, ident.os) == (want["serial"], want["os"])
    assert ident.sysroot == str(FIXTURES / board) and ident.virtual is False
    assert hardware.describe(ident) == want["describe"]
    name, reason = hardware.suggest_profile(ident, ["generic-linux", "raspberry-pi-4", "raspberry-pi-5",
                                                    "jetson-orin-nano", "x86-ipc"])
    assert name == want["profile"], reason
    assert hardware.mismatch(want["profile"], ident) is None


def test_the_boards_details() -> None:
    pi4 = ident_of(FIXTURES / "raspberry-pi-4")
    assert pi4.compatible == ["raspberrypi,4-model-b", "brcm,bcm2711"]
    assert pi4.raspberry_pi is not None and pi4.raspberry_pi.model_dump() == {
        "code": "c03115", "style": "new", "type": "4B", "model": "Raspberry Pi 4 Model B", "revision": "1.5",
        "memory_mb": 4096, "manufacturer": "Sony UK", "processor": "BCM2711", "warranty_voided": False,
        "overvoltage_allowed": True, "otp_program_allowed": True, "otp_read_allowed": True}
    assert (pi4.serial_source, pi4.hostname, pi4.kernel) == ("device-tree", "press-cam-1", "6.6.51+rpt-rpi-v8")
    assert pi4.memory_bytes == 3885776 * 1024 and pi4.jetson is None
    jetson = ident_of(FIXTURES / "jetson-orin-nano")
    assert jetson.jetson is not None and jetson.jetson.model_dump() == {
        "l4t": "36.4.4", "jetpack": "6.2.1", "board": "generic", "power_mode": "15W", "power_mode_id": 0,
        "release_line": "# R36 (release), REVISION: 4.4, GCID: 41062509, BOARD: generic, EABI: aarch64, "
                        "DATE: Mon Jun 16 16:07:13 UTC 2025"}
    assert jetson.compatible[-1] == "nvidia,tegra234" and jetson.raspberry_pi is None
    ipc = ident_of(FIXTURES / "x86-ipc")
    assert (ipc.vendor, ipc.product, ipc.board, ipc.model_source) == ("Advantech", "UNO-127", "Advantech UNO-127", "dmi")
    assert ipc.serial is None  # "--" in the published dump: a placeholder, not a serial
    old = ident_of(FIXTURES / "raspberry-pi-1-model-b")  # no device tree: cpuinfo's Hardware says Pi
    assert old.raspberry_pi is not None and (old.raspberry_pi.style, old.raspberry_pi.memory_mb) == ("old", 512)
    assert hardware.describe(old) == "Raspberry Pi Model B Rev 2.0, 512 MB"
    assert hardware.suggest_profile(old)[0] == "generic-linux"


def test_this_machine_is_read_natively_and_without_error() -> None:
    ident = ident_of("/")
    assert ident.sysroot is None and ident.python and ident.kernel and ident.hostname
    assert ident.machine == os.uname().machine
    if ident.virtual:  # a VM or a container host is never called a mismatch
        assert all(hardware.mismatch(p, ident) is None for p in hardware.BOARD_PROFILES)


# ---- Raspberry Pi revision codes ----------------------------------------------------------------------------
@pytest.mark.parametrize("code, want", [
    ("c03115", ("new", "4B", "Raspberry Pi 4 Model B", "1.5", 4096, "Sony UK", "BCM2711")),
    ("d04170", ("new", "5", "Raspberry Pi 5", "1.0", 8192, "Sony UK", "BCM2712")),
    ("e04171", ("new", "5", "Raspberry Pi 5", "1.1", 16384, "Sony UK", "BCM2712")),
    ("a22082", ("new", "3B", "Raspberry Pi 3 Model B", "1.2", 1024, "Embest", "BCM2837")),
    ("a52082", ("new", "3B", "Raspberry Pi 3 Model B", "1.2", 1024, "Stadium", "BCM2837")),
    ("902120", ("new", "Zero 2 W", "Raspberry Pi Zero 2 W", "1.0", 512, "Sony UK", "BCM2837")),
    ("9000c1", ("new", "Zero W", "Raspberry Pi Zero W", "1.1", 512, "Sony UK", "BCM2835")),
    ("c03130", ("new", "400", "Raspberry Pi 400", "1.0", 4096, "Sony UK", "BCM2711")),
    ("d03140", ("new", "CM4", "Raspberry Pi Compute Module 4", "1.0", 8192, "Sony UK", "BCM2711")),
    ("0x00a01041", ("new", "2B", "Raspberry Pi 2 Model B", "1.1", 1024, "Sony UK", "BCM2836")),
    ("000d", ("old", "B", "Raspberry Pi Model B", "2.0", 512, "Egoman", "BCM2835")),
    ("0002", ("old", "B", "Raspberry Pi Model B", "1.0", 256, "Egoman", "BCM2835")),
    ("0010", ("old", "B+", "Raspberry Pi Model B+", "1.2", 512, "Sony UK", "BCM2835")),
    ("0015", ("old", "A+", "Raspberry Pi Model A+", "1.1", None, "Embest", "BCM2835")),
])
def test_revision_codes_as_the_official_table_gives_them(code: str, want: tuple) -> None:
    got = decode_pi_revision(code)
    assert got is not None
    assert (got["style"], got["type"], got["model"], got["revision"], got["memory_mb"], got["manufacturer"],
            got["processor"]) == want
    assert got["warranty_voided"] is False


def test_revision_code_flags_and_refusals() -> None:
    overvolted_old = decode_pi_revision("1000002")  # old style with the "1000" prefix: warranty voided
    assert overvolted_old is not None and overvolted_old["warranty_voided"] and overvolted_old["type"] == "B"
    flags = decode_pi_revision("%x" % (0xC03115 | 1 << 25 | 1 << 31 | 1 << 30 | 1 << 29))
    assert flags is not None and flags["warranty_voided"] and not flags["overvoltage_allowed"]
    assert not flags["otp_program_allowed"] and not flags["otp_read_allowed"] and flags["type"] == "4B"
    unknown_type = decode_pi_revision("c031f5")
    assert unknown_type is not None and unknown_type["model"] is None and unknown_type["type"] == "unknown type 0x1f"
    for bad in ("", "zz", "0001", "000a", "123456789", "-1", " ", "c0 3115", "0x", None, 5):
        assert decode_pi_revision(bad) is None, bad


# ---- Jetson parsers ----------------------------------------------------------------------------------------
def test_nv_tegra_release_and_nvpmodel_parsing() -> None:
    r32 = parse_nv_tegra_release("# R32 (release), REVISION: 7.1, GCID: 29689809, BOARD: t186ref, EABI: aarch64\n")
    assert r32 == {"l4t": "32.7.1", "jetpack": "4.6.1", "board": "t186ref",
                   "line": "# R32 (release), REVISION: 7.1, GCID: 29689809, BOARD: t186ref, EABI: aarch64"}
    assert parse_nv_tegra_release("# R35 (release), REVISION: 4.1, GCID: 33958178")["jetpack"] == "5.1.2"
    assert parse_nv_tegra_release("# R99 (release), REVISION: 1.0")["jetpack"] is None  # not guessed
    for bad in ("", "R36", "# R36 (release)", "\x00\x00", "garbage\n# R36 (release), REVISION: 4.4", None):
        assert parse_nv_tegra_release(bad) is None
    assert parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN_SUPER\n2\n") == ("MAXN_SUPER", 2)
    assert parse_nvpmodel("NV Power Mode: 7W\n") == ("7W", None)
    assert parse_nvpmodel("nvpmodel: command failed\n") == (None, None)


# ---- suggestion and mismatch ---------------------------------------------------------------------------------
def test_mismatch_message_and_when_there_is_none() -> None:
    pi4 = ident_of(FIXTURES / "raspberry-pi-4")
    text = hardware.mismatch("raspberry-pi-5", pi4)
    assert text == ("profile raspberry-pi-5, but this is a Raspberry Pi 4 Model B Rev 1.5, 4 GB; "
                    "the raspberry-pi-4 profile fits it")
    assert hardware.mismatch("raspberry-pi-4", pi4) is None
    assert hardware.mismatch("generic-linux", pi4) is None  # fits any device
    assert hardware.mismatch("line3-custom", pi4) is None  # the technician's own profile
    assert hardware.mismatch("raspberry-pi-5", None) is None
    ipc = ident_of(FIXTURES / "x86-ipc")
    assert hardware.mismatch("jetson-orin-nano", ipc) == ("profile jetson-orin-nano, but this is an Advantech UNO-127, "
                                                          "4 GB; the x86-ipc profile fits it")
    jetson = ident_of(FIXTURES / "jetson-orin-nano")
    assert hardware.mismatch("x86-ipc", jetson).startswith("profile x86-ipc, but this is an NVIDIA Jetson Orin Nano")
    old = ident_of(FIXTURES / "raspberry-pi-1-model-b")
    assert hardware.mismatch("raspberry-pi-4", old) == (
        "profile raspberry-pi-4, but this is a Raspberry Pi Model B Rev 2.0, 512 MB; no bundled profile fits it, "
        "generic-linux is the safe choice")
    vm = wire.IdentityResult(machine="x86_64", cpu="Intel(R) Xeon(R) Processor", virtual=True, memory_bytes=8 << 30)
    assert hardware.family(vm) == "virtual" and hardware.mismatch("raspberry-pi-5", vm) is None
    assert hardware.suggest_profile(vm) == ("generic-linux", "virtual machine (x86_64, Intel(R) Xeon(R) Processor), "
                                            "8 GB: a virtual machine, not a device with a hardware profile")
    nothing = wire.IdentityResult()
    assert hardware.describe(nothing) == "unidentified device" and hardware.mismatch("x86-ipc", nothing) is None
    # a profile that is not installed is never suggested
    assert hardware.suggest_profile(pi4, ["generic-linux", "x86-ipc"])[0] == "generic-linux"


def test_memory_is_shown_as_the_fitted_size() -> None:
    def mem(kib: int) -> str | None:
        return hardware.memory_text(wire.IdentityResult(memory_bytes=kib * 1024))

    assert mem(3885776) == "4 GB" and mem(7802512) == "8 GB" and mem(16_303_000) == "16 GB"
    assert mem(1_897_000) == "2 GB" and mem(443_000) == "512 MB" and mem(5_000_000) == "4.8 GB"
    assert hardware.memory_text(wire.IdentityResult()) is None


# ---- health, the fleet and the device screen ----------------------------------------------------------------
def test_health_warns_when_the_profile_is_for_other_hardware(home: Home, device_root: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fieldkit.health import check_device
    from fieldkit.inventory import add_device

    monkeypatch.setenv("FIELDKIT_AGENT_SYSROOT", str(FIXTURES / "raspberry-pi-4"))
    add_device(home, "press-4", f"local:{device_root}", profile="raspberry-pi-5")
    report = check_device("press-4", home)
    first = report.checks[0]
    assert (first.name, first.status) == ("hardware", "warn")
    assert first.message.startswith("profile raspberry-pi-5, but this is a Raspberry Pi 4 Model B Rev 1.5, 4 GB")
    assert report.to_json()["hardware"]["raspberry_pi"]["code"] == "c03115"
    add_device(home, "press-4", f"local:{device_root}", profile="raspberry-pi-4", replace=True)
    assert all(c.name != "hardware" for c in check_device("press-4", home).checks)


def test_health_cli_json_shows_the_warning(home: Home, device_root: Path) -> None:
    env = {"FIELDKIT_AGENT_SYSROOT": str(FIXTURES / "jetson-orin-nano")}
    assert run_cli("devices", "add", "weld-1", f"local:{device_root}", "--profile", "x86-ipc").returncode == 0
    proc = run_cli("health", "weld-1", "--json", env=env)
    doc = json.loads(proc.stdout)
    assert doc["checks"][0]["name"] == "hardware" and doc["checks"][0]["status"] == "warn", proc.stderr
    assert doc["checks"][0]["message"] == ("profile x86-ipc, but this is an NVIDIA Jetson Orin Nano Developer Kit, 8 GB, "
                                           "JetPack 6.2.1 (L4T 36.4.4); the jetson-orin-nano profile fits it")
    assert doc["hardware"]["jetson"]["power_mode"] == "15W" and doc["status"] in ("warn", "crit")
    text = run_cli("health", "weld-1", env=env).stdout  # the human report names the hardware too
    assert "  hardware: NVIDIA Jetson Orin Nano Developer Kit, 8 GB, JetPack 6.2.1 (L4T 36.4.4)" in text


def test_an_agent_without_identity_or_a_hostile_one_leaves_health_alone(home: Home) -> None:
    from fakeagent import FakeAgent

    from fieldkit.devices import open_session
    from fieldkit.health import measure

    with FakeAgent() as old:  # an agent from before the operation
        with open_session(old.target, home, witness=False) as session:
            assert session.identity() is None
    calls = []

    def hostile(args: dict) -> dict:
        calls.append(args)
        return {"model": 5, "compatible": "not a list"}

    from test_hostile_device import good_health

    with FakeAgent({"identity": hostile, "health": good_health()}) as bad:
        with open_session(bad.target, home, witness=False) as session:
            from fieldkit.errors import DeviceError

            with pytest.raises(DeviceError) as err:
                session.identity()
            assert err.value.code == "bad_result" and "identity result" in err.value.message
            raw, _ = measure(session, sample_s=0.05)
            assert "identity" not in raw  # the readings stand without it
    assert len(calls) == 2


async def test_fleet_and_device_screen_show_the_mismatch(home: Home, device_root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import DataTable

    from fieldkit.inventory import add_device
    from screens.app import build_app
    from screens.device import DeviceScreen

    monkeypatch.setenv("FIELDKIT_AGENT_SYSROOT", str(FIXTURES / "raspberry-pi-4"))
    add_device(home, "press-4", f"local:{device_root}", profile="raspberry-pi-5")
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(120, 30)) as pilot:
        table = app.screen.query_one("#devices", DataTable)
        await wait_for(pilot, lambda: "profile raspberry-pi-5" in str(table.get_cell("press-4", "note")),
                       what="the fleet's note")
        assert "Raspberry Pi 4 Model B Rev 1.5" in str(table.get_cell("press-4", "note"))
        await app.push_screen(DeviceScreen(home, "press-4", interval=5))
        checks = app.screen.query_one("#checks", DataTable)
        await wait_for(pilot, lambda: "hardware" in [str(k.value) for k in checks.rows], what="the hardware check")
        assert "WARN" in str(checks.get_cell("hardware", "status"))
        assert str(checks.get_cell("hardware", "detail")).startswith(
            "profile raspberry-pi-5, but this is a Raspberry Pi 4 Model B Rev 1.5, 4 GB")


# ---- devices add without --profile ---------------------------------------------------------------------------
@pytest.mark.parametrize("board", BOARDS)
def test_devices_add_picks_the_profile_that_fits(board: str, home: Home, device_root: Path) -> None:
    proc = run_cli("devices", "add", "cell-7", f"local:{device_root}",
                   env={"FIELDKIT_AGENT_SYSROOT": str(FIXTURES / board)})
    assert proc.returncode == 0, proc.stderr
    profile = EXPECTED[board]["profile"]
    assert proc.stdout.splitlines()[0] == f"added cell-7 -> local:{device_root} ({profile})"
    assert f"profile {profile}, chosen for the hardware: {EXPECTED[board]['describe']}" in proc.stdout
    doc = json.loads(run_cli("devices", "list", "--json").stdout)
    assert [d["profile"] for d in doc["devices"]] == [profile]


def test_devices_add_unreachable_or_explicit_keeps_todays_behaviour(home: Home, device_root: Path) -> None:
    t0 = time.monotonic()
    proc = run_cli("devices", "add", "gone", "local:/nonexistent/device-root")
    assert proc.returncode == 0, proc.stderr
    assert "(generic-linux)" in proc.stdout.splitlines()[0]
    assert "could not identify the hardware (local device root /nonexistent/device-root is not a directory)" in proc.stdout
    assert "set one later: fieldkit devices add gone local:/nonexistent/device-root --profile PROFILE --replace" in proc.stdout
    assert time.monotonic() - t0 < 30
    proc = run_cli("devices", "add", "pi", f"local:{device_root}", "--profile", "raspberry-pi-5",
                   env={"FIELDKIT_AGENT_SYSROOT": str(FIXTURES / "raspberry-pi-4")})
    assert proc.returncode == 0 and proc.stdout.strip() == f"added pi -> local:{device_root} (raspberry-pi-5)"
    proc = run_cli("devices", "add", "later", f"local:{device_root}", "--identify-seconds", "0",
                   env={"FIELDKIT_AGENT_SYSROOT": str(FIXTURES / "raspberry-pi-4")})
    assert proc.returncode == 0 and "(generic-linux)" in proc.stdout and "not identified" in proc.stdout
    # a name that is refused is refused before anything is reached
    proc = run_cli("devices", "add", "pi", f"local:{device_root}")
    assert proc.returncode == 2 and "already in the inventory" in proc.stderr


@pytest.mark.no_identity
def test_devices_add_without_an_operator_identity_says_why(device_root: Path) -> None:
    proc = run_cli("devices", "add", "cam", f"local:{device_root}")
    assert proc.returncode == 0, proc.stderr
    assert "(generic-linux)" in proc.stdout and "no operator identity" in proc.stdout


def test_the_raspberry_pi_4_profile_has_the_pi_4s_limits() -> None:
    from fieldkit.profiles import get_profile

    pi4 = get_profile("raspberry-pi-4", Home(Path("/nonexistent-fieldkit-home")))
    # throttling starts at 80 C on a Pi 4 (no soft limit): warn before, crit from there
    assert (pi4.thresholds.temperature_c.warn, pi4.thresholds.temperature_c.crit) == (75, 80)
    assert pi4.arch == "aarch64" and pi4.service is not None
    pi5 = get_profile("raspberry-pi-5", Home(Path("/nonexistent-fieldkit-home")))
    assert pi4.use_case("vision-reject").budget_ms > pi5.use_case("vision-reject").budget_ms


# ---- hostile files -------------------------------------------------------------------------------------------
def _tree(base: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return base


def test_hostile_files_never_break_it(tmp_path: Path) -> None:
    huge = b"processor\t: 0\nmodel name\t: " + b"A" * 50_000 + b"\n" + os.urandom(1 << 20) * 20  # 20 MB
    root = _tree(tmp_path / "hostile", {
        "proc/cpuinfo": huge,
        "proc/device-tree/model": b"\x00\x00Rasp\x00berry\x01\x1b[31mPi\xff\xfe 4" + b"\x00" * 100,
        "proc/device-tree/compatible": b"\x00".join(b"vendor,board-%d" % i for i in range(1000)),
        "proc/device-tree/serial-number": os.urandom(5000),
        "proc/meminfo": b"MemTotal: 99999999999999999999999 kB\n",
        "etc/os-release": b"PRETTY_NAME=\"" + "\u202e evil \u0000".encode() * 100 + b"\"\n",
        "etc/nv_tegra_release": b"# R36 (release), REVISION: 99999.1" + b"\xff" * 10_000,
        "sys/class/dmi/id/sys_vendor": b"To Be Filled By O.E.M.\n",
        "sys/class/dmi/id/product_name": os.urandom(100_000),
    })
    os.mkfifo(root / "sys/class/dmi/id/board_name")  # reading a FIFO would block forever
    os.symlink("/dev/zero", root / "sys/class/dmi/id/product_serial")  # an endless device
    (root / "proc/sys/kernel/hostname").mkdir(parents=True)  # a directory where a file belongs
    t0 = time.monotonic()
    doc = agent_identity.identity(str(root))
    assert time.monotonic() - t0 < 5
    ident = wire.parse_result("identity", doc, device="hostile")  # fits the laptop's bounds
    assert ident.model is not None and "\x00" not in ident.model and "\x1b" not in ident.model
    assert len(ident.model) <= 256 and len(ident.compatible) == 16
    assert ident.cpu is not None and len(ident.cpu) <= 256 and ident.cpu_cores == 1
    assert ident.vendor is None  # the placeholder is not a vendor
    assert ident.memory_bytes is None and ident.hostname is None and ident.board is None
    assert ident.jetson is None  # a nonsense release line is no evidence of a Jetson
    hardware.describe(ident), hardware.suggest_profile(ident), hardware.mismatch("x86-ipc", ident)


def test_a_stuck_or_flooding_nvpmodel_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_identity, "NVPMODEL_TIMEOUT_S", 0.5)
    for name, script in (("stuck", "#!/bin/sh\nsleep 30\n"), ("flood", "#!/bin/sh\nyes 'NV Power Mode: X'\n"),
                         ("garbage", "#!/bin/sh\nhead -c 100000 /dev/urandom\n")):
        root = _tree(tmp_path / name, {"etc/nv_tegra_release": b"# R35 (release), REVISION: 4.1, GCID: 1\n",
                                       "usr/sbin/nvpmodel": script.encode()})
        (root / "usr/sbin/nvpmodel").chmod(0o755)
        t0 = time.monotonic()
        ident = wire.parse_result("identity", agent_identity.identity(str(root)), device=name)
        assert time.monotonic() - t0 < 3, name
        assert ident.jetson is not None and ident.jetson.l4t == "35.4.1" and ident.jetson.jetpack == "5.1.2"
        assert ident.jetson.power_mode in (None, "X"), (name, ident.jetson.power_mode)


# ---- fuzz -------------------------------------------------------------------------------------------------------
cpuinfo_lines = st.lists(st.one_of(
    st.text(max_size=80),
    st.builds(lambda k, v: f"{k}\t: {v}", st.sampled_from(["Revision", "Serial", "Model", "Hardware", "processor",
                                                            "model name", "CPU part", "CPU implementer", "flags"]),
              st.text(max_size=40)),
), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=cpuinfo_lines)
def test_fuzz_cpuinfo_parser(lines: list[str]) -> None:
    parsed = parse_cpuinfo("\n".join(lines))
    assert parsed["processors"] >= 0
    for key, value in parsed["fields"].items():
        assert isinstance(key, str) and len(key) <= 64
        assert isinstance(value, str) and 0 < len(value) <= 256 and "\x00" not in value
    decode_pi_revision(parsed["fields"].get("revision"))


@settings(max_examples=500, deadline=None)
@given(code=st.one_of(st.text(max_size=12), st.integers(0, 2**32 - 1).map(lambda n: "%x" % n)))
def test_fuzz_revision_decoder(code: str) -> None:
    got = decode_pi_revision(code)
    if got is not None:
        wire.RaspberryPiRevision.model_validate(got)
        assert got["style"] in ("new", "old")
        assert got["memory_mb"] is None or got["memory_mb"] in (256, 512, 1024, 2048, 4096, 8192, 16384)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(files=st.dictionaries(st.sampled_from(["proc/cpuinfo", "proc/device-tree/model", "proc/device-tree/compatible",
                                              "proc/meminfo", "etc/os-release", "etc/nv_tegra_release",
                                              "sys/class/dmi/id/sys_vendor", "sys/class/dmi/id/product_name",
                                              "proc/sys/kernel/hostname"]),
                             st.binary(max_size=2000), max_size=9))
def test_fuzz_whole_trees(files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> None:
    root = _tree(tmp_path_factory.mktemp("fuzz"), files)
    ident = wire.parse_result("identity", agent_identity.identity(str(root), run_programs=False), device="fuzz")
    hardware.describe(ident)
    hardware.suggest_profile(ident)
    for profile in hardware.BOARD_PROFILES:
        hardware.mismatch(profile, ident)
