"""Device inventory: real files under a temporary FIELDKIT_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import pytest

from fieldkit.errors import ConfigError
from fieldkit.inventory import (
    Device,
    add_device,
    get_device,
    load_inventory,
    remove_device,
    ssh_config_candidates,
)
from fieldkit.locations import Home

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("FIELDKIT_HOME", str(tmp_path / "home"))
    return Home.current()


def test_empty_when_no_file(home: Home) -> None:
    assert load_inventory(home) == []
    assert get_device(home, "anything") is None


def test_add_list_remove_round_trip(home: Home) -> None:
    a = add_device(home, "line3-cam", "ssh://pi@10.0.0.7:2222", "raspberry-pi-5")
    b = add_device(home, "press_07", "serial:///dev/ttyUSB0?baud=115200", notes='cabinet "B", row 2\\east\n')
    c = add_device(home, "bench.sim", "local:")
    assert a.profile == "raspberry-pi-5" and b.profile == "generic-linux"
    assert datetime.fromisoformat(a.added).utcoffset().total_seconds() == 0

    # a fresh read from disk sees exactly what was added, in order
    assert load_inventory(home) == [a, b, c]
    assert get_device(home, "press_07").notes == 'cabinet "B", row 2\\east\n'
    # the file is real TOML that other tools can read
    data = tomllib.loads(home.inventory.read_text(encoding="utf-8"))
    assert [d["name"] for d in data["devices"]] == ["line3-cam", "press_07", "bench.sim"]
    assert data["devices"][1]["notes"] == 'cabinet "B", row 2\\east\n'

    removed = remove_device(home, "press_07")
    assert removed == b
    assert [d.name for d in load_inventory(home)] == ["line3-cam", "bench.sim"]
    assert get_device(home, "press_07") is None
    # no temp files left behind by the atomic writes
    assert sorted(p.name for p in home.root.iterdir() if p.name.startswith(".")) == []


def test_toml_escaping_of_control_characters(home: Home) -> None:
    notes = "tab\there\x01\x7f é ✓ \\u0041"
    add_device(home, "odd", "local:", notes=notes)
    assert get_device(home, "odd").notes == notes


def test_duplicate_refused_unless_replace(home: Home) -> None:
    add_device(home, "gw1", "ssh://10.0.0.8")
    with pytest.raises(ConfigError) as info:
        add_device(home, "gw1", "ssh://10.0.0.9")
    assert 'a device named "gw1" is already in the inventory' in info.value.message
    assert "ssh://10.0.0.8" in info.value.message
    assert get_device(home, "gw1").target == "ssh://10.0.0.8"

    add_device(home, "gw1", "ssh://10.0.0.9", "x86-ipc", replace=True)
    [only] = load_inventory(home)
    assert (only.target, only.profile) == ("ssh://10.0.0.9", "x86-ipc")


@pytest.mark.parametrize("name", ["", "-leading-dash", "has space", "a/b", "x" * 64, "ünïcode"])
def test_bad_name_refused(home: Home, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        add_device(home, name, "ssh://10.0.0.7")
    assert f'device name "{name}" is not valid' in info.value.message
    assert not home.inventory.exists()


@pytest.mark.parametrize("target", ["ftp://10.0.0.7", "ssh://", "has spaces in it", " ssh://10.0.0.7"])
def test_bad_target_refused(home: Home, target: str) -> None:
    with pytest.raises(ConfigError) as info:
        add_device(home, "cam1", target)
    assert info.value.exit_code == 2
    assert 'device "cam1"' in info.value.message and target.strip() in info.value.message
    assert not home.inventory.exists()


def test_unknown_profile_refused(home: Home) -> None:
    with pytest.raises(ConfigError) as info:
        add_device(home, "cam1", "ssh://10.0.0.7", "raspberry-pi-6")
    assert 'unknown profile "raspberry-pi-6"' in info.value.message
    assert "raspberry-pi-5" in info.value.message
    assert not home.inventory.exists()


def test_user_profile_accepted(home: Home) -> None:
    (home.profiles_dir).mkdir(parents=True)
    (home.profiles_dir / "press-hmi.toml").write_text('name = "press-hmi"\ndescription = "HMI"\n')
    assert add_device(home, "hmi1", "hmi1.plant.lan", "press-hmi").profile == "press-hmi"


def test_remove_unknown_refused(home: Home) -> None:
    add_device(home, "gw1", "ssh://10.0.0.8")
    with pytest.raises(ConfigError) as info:
        remove_device(home, "gw2")
    assert info.value.message == 'no device named "gw2" in the inventory; known: gw1'
    assert [d.name for d in load_inventory(home)] == ["gw1"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"this is not toml at all\n", "line 1, column"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
        (b'devices = "nope"\n', "expected [[devices]] entries"),
        (b'[[devices]]\nname = "a"\n', '"a": target is missing'),
        (b'[[devices]]\nname = "a"\ntarget = "local:"\nprofil = "x"\n', "unknown key 'profil'"),
        (b'[[devices]]\nname = "a"\ntarget = 7\n', "target = 7: expected a string"),
        (b'[[devices]]\nname = "a"\ntarget = "local:"\n[[devices]]\nname = "a"\ntarget = "local:"\n', "listed twice"),
        (b"version = 9\n", "newer fieldkit"),
    ],
)
def test_garbage_inventory_is_a_config_error(home: Home, content: bytes, expected: str) -> None:
    home.ensure()
    home.inventory.write_bytes(content)
    for call in (lambda: load_inventory(home), lambda: add_device(home, "x", "local:"),
                 lambda: remove_device(home, "a")):
        with pytest.raises(ConfigError) as info:
            call()
        assert info.value.message.startswith(f"{home.inventory}: ")
        assert expected in info.value.message
    assert home.inventory.read_bytes() == content  # never overwritten


def test_hand_written_toml_datetime_accepted(home: Home) -> None:
    home.ensure()
    home.inventory.write_text('[[devices]]\nname = "a"\ntarget = "local:"\nadded = 2026-01-02T03:04:05Z\n')
    [d] = load_inventory(home)
    assert d == Device(name="a", target="local:", profile="generic-linux", notes="", added="2026-01-02T03:04:05+00:00")


def test_concurrent_writers_lose_nothing(home: Home) -> None:
    script = (
        "import sys\n"
        "from fieldkit.inventory import add_device\n"
        "w = sys.argv[1]\n"
        "for i in range(8):\n"
        "    add_device(None, f'w{w}-{i}', 'local:')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(w)], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
        for w in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    names = sorted(d.name for d in load_inventory(home))
    assert names == sorted(f"w{w}-{i}" for w in range(4) for i in range(8))


def test_ssh_config_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "plant.conf").write_text("Host line4-gw\n  HostName 10.4.0.1\n")
    cfg = tmp_path / "config"
    cfg.write_text(
        "# site devices\n"
        "Include conf.d/*.conf\n"
        "Host *\n"
        "    ServerAliveInterval 30\n"
        "Host line3-cam press-hmi\n"
        "    HostName 10.0.0.7\n"
        "    User pi\n"
        "host=jetson-01\n"
        "Host 10.0.* !10.0.0.1 *.lan cam?\n"
        "    User root\n"
        "Match host foo\n"
        "Host line3-cam\n"
    )
    expected = ["line4-gw", "line3-cam", "press-hmi", "jetson-01"]
    assert ssh_config_candidates(cfg) == expected
    monkeypatch.setenv("FIELDKIT_SSH_CONFIG", str(cfg))
    assert ssh_config_candidates() == expected
    monkeypatch.setenv("FIELDKIT_SSH_CONFIG", str(tmp_path / "missing"))
    assert ssh_config_candidates() == []
