"""Device profiles: bundled files load, bad files are explained in technician language."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fieldkit.errors import ConfigError
from fieldkit.locations import Home
from fieldkit.profiles import (
    Profile,
    ProfileError,
    Threshold,
    bundled_profiles_dir,
    check_profile_file,
    get_profile,
    list_profiles,
    load_profile_file,
)

REPO = Path(__file__).resolve().parent.parent
BUNDLED = ("generic-linux", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5", "x86-ipc")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("FIELDKIT_HOME", str(tmp_path / "home"))
    return Home.current().ensure()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_profile_file(path)
    err = info.value
    assert err.exit_code == 2
    lines = err.message.splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    assert "pydantic" not in str(err) and "Input should be" not in str(err)
    return lines


# --- bundled profiles -----------------------------------------------------------------------------


def test_bundled_dir_from_checkout_is_repo_profiles() -> None:
    assert bundled_profiles_dir() == REPO / "profiles"
    assert sorted(p.stem for p in bundled_profiles_dir().glob("*.toml")) == sorted(BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_profile_loads(name: str) -> None:
    profile = load_profile_file(REPO / "profiles" / f"{name}.toml")
    assert profile.name == name
    assert profile.description
    assert 2 <= len(profile.use_cases) <= 3
    for uc in profile.use_cases.values():
        assert uc.budget_ms > 0 and uc.description
    t = profile.thresholds
    assert t.temperature_c.warn < t.temperature_c.crit


def test_bundled_numbers_match_the_hardware() -> None:
    home = Home(Path("/nonexistent-fieldkit-home"))
    pi = get_profile("raspberry-pi-5", home)
    assert (pi.thresholds.temperature_c.warn, pi.thresholds.temperature_c.crit) == (75, 82)
    assert pi.use_case("vision-reject").budget_ms == 100 and pi.use_case("vision-reject").metric == "p99"
    jetson = get_profile("jetson-orin-nano", home)
    assert jetson.memory.shared_gpu_memory and jetson.thresholds.temperature_c.crit == 90
    assert jetson.thresholds.temperature_for("tj-thermal").crit == 92
    assert jetson.thresholds.temperature_for("cpu-thermal") == jetson.thresholds.temperature_c
    ipc = get_profile("x86-ipc", home)
    assert ipc.memory.headroom_mb > get_profile("generic-linux", home).memory.headroom_mb
    assert (ipc.thresholds.temperature_c.warn, ipc.thresholds.temperature_c.crit) == (80, 90)


def test_bundled_dir_from_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When ``fieldkit.bundled_profiles`` is importable (installed wheel), its directory is used."""
    pkg = tmp_path / "site" / "bundled_profiles"
    write(pkg / "__init__.py", '"""installed profiles"""\n')
    write(pkg / "only-here.toml", 'name = "only-here"\ndescription = "from the installed package"\n')
    spec = importlib.util.spec_from_file_location(
        "fieldkit.bundled_profiles", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "fieldkit.bundled_profiles", module)
    assert bundled_profiles_dir() == pkg
    home = Home(tmp_path / "home")
    assert [p.name for p in list_profiles(home)] == ["only-here"]


# --- minimal and default values -------------------------------------------------------------------


def test_minimal_profile_is_valid_and_defaults_equal_generic_linux(tmp_path: Path) -> None:
    p = load_profile_file(write(tmp_path / "tiny.toml", 'name = "tiny"\ndescription = "a small box"\n'))
    generic = load_profile_file(REPO / "profiles" / "generic-linux.toml")
    for section in ("transport", "paths", "thresholds", "memory", "service", "arch"):
        assert getattr(p, section) == getattr(generic, section), section
    assert p.source == tmp_path / "tiny.toml"
    assert p.use_cases == {}


def test_threshold_levels() -> None:
    t = Threshold(warn=75, crit=82)
    assert [t.level(v) for v in (20, 75, 81.9, 82, 120)] == ["ok", "warn", "warn", "crit", "crit"]


def test_use_case_lookup_lists_available() -> None:
    pi = load_profile_file(REPO / "profiles" / "raspberry-pi-5.toml")
    with pytest.raises(ConfigError) as info:
        pi.use_case("vision-rejct")
    assert "vision-reject" in info.value.message and "ocr-label-check" in info.value.message
    assert info.value.hint == 'did you mean "vision-reject"?'


# --- malformed profiles ---------------------------------------------------------------------------


def test_wrong_type_names_file_key_value_expectation(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.toml",
        'name = "x"\ndescription = "d"\n[thresholds]\ntemperature_c = { warn = "hot", crit = 82 }\n',
    )
    assert problems_of(path) == [f'{path}: thresholds.temperature_c.warn = "hot": expected a number']


def test_quoted_number_is_not_silently_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "x.toml", 'name = "x"\ndescription = "d"\n[transport]\nssh_port = "22"\n')
    assert problems_of(path) == [f'{path}: transport.ssh_port = "22": expected a whole number']


def test_warn_above_crit(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.toml", 'name = "x"\ndescription = "d"\n[thresholds]\ncpu_percent = { warn = 95, crit = 85 }\n'
    )
    [line] = problems_of(path)
    assert line.startswith(f"{path}: thresholds.cpu_percent = {{ warn = 95, crit = 85 }}: ")
    assert "expected warn <= crit" in line


def test_negative_threshold(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.toml", 'name = "x"\ndescription = "d"\n[thresholds]\ndisk_used_percent = { warn = -1, crit = 9 }\n'
    )
    assert problems_of(path) == [f"{path}: thresholds.disk_used_percent.warn = -1: expected a number >= 0 (not negative)"]


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.toml", 'name = "x"\ndescription = "d"\n[thresholds]\ntemprature_c = { warn = 1, crit = 2 }\n'
    )
    [line] = problems_of(path)
    assert line.startswith(f"{path}: thresholds.temprature_c = {{ warn = 1, crit = 2 }}: unknown key")
    assert 'did you mean "temperature_c"?' in line
    assert "clock_offset_s" in line  # the allowed keys are listed


def test_unknown_top_level_table(tmp_path: Path) -> None:
    path = write(tmp_path / "x.toml", 'name = "x"\ndescription = "d"\n[trasport]\ndefault = "ssh"\n')
    [line] = problems_of(path)
    assert f'{path}: trasport = {{ default = "ssh" }}: unknown key; did you mean "transport"?' in line


def test_bad_toml_syntax_names_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.toml", 'name = "x"\ndescription = "d"\n[thresholds]\ntemperature_c = { warn = 75 crit = 82 }\n'
    )
    with pytest.raises(ConfigError) as info:
        load_profile_file(path)
    assert info.value.message.startswith(f"{path}: line 4, column ")
    assert "invalid TOML" in info.value.message
    assert "temperature_c = { warn = 75 crit = 82 }" in info.value.hint


def test_name_must_match_file_stem(tmp_path: Path) -> None:
    path = write(tmp_path / "pi-line3.toml", 'name = "raspberry-pi-5"\ndescription = "d"\n')
    assert problems_of(path) == [
        f'{path}: name = "raspberry-pi-5": expected "pi-line3" (the name must match the file name pi-line3.toml)'
    ]


def test_negative_budget_and_bad_metric(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.toml",
        'name = "x"\ndescription = "d"\n[use_cases.vision-reject]\nbudget_ms = -5\nmetric = "p50"\n',
    )
    assert problems_of(path) == [
        f"{path}: use_cases.vision-reject.budget_ms = -5: expected a number greater than 0",
        f'{path}: use_cases.vision-reject.metric = "p50": expected one of "p90", "p95", "p99"',
    ]


def test_missing_and_several_problems_one_line_each(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.toml",
        '[transport]\ndefault = "telnet"\npython = "python3"\n[paths]\nmodels = "var/lib/models"\n'
        '[memory]\nheadroom_mb = 1.5\n[service]\nunit = "inference"\n',
    )
    lines = problems_of(path)
    assert lines == [
        f"{path}: name: missing; expected a string in quotes",
        f"{path}: description: missing; expected a string in quotes",
        f'{path}: transport.default = "telnet": expected one of "ssh", "serial"',
        f'{path}: transport.python = "python3": expected a list of strings, e.g. ["python3", "/usr/bin/python3"]',
        f'{path}: paths.models = "var/lib/models": expected an absolute path on the device (starting with /)',
        f"{path}: memory.headroom_mb = 1.5: expected a whole number",
        f'{path}: service.unit = "inference": expected a systemd unit name ending in .service, '
        'e.g. "edge-inference.service"',
    ]
    with pytest.raises(ProfileError) as info:
        check_profile_file(path)
    assert info.value.problems == lines and info.value.path == path


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_profile_file(tmp_path / "absent.toml")
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "latin"\ndescription = "Temp\xe9rature"\n')
    with pytest.raises(ConfigError) as info:
        load_profile_file(path)
    assert info.value.message.startswith(f"{path}: line 2: not UTF-8")


# --- lookup ---------------------------------------------------------------------------------------


def test_user_profile_overrides_bundled(home: Home) -> None:
    write(
        home.profiles_dir / "raspberry-pi-5.toml",
        'name = "raspberry-pi-5"\ndescription = "Pi 5 in the hot press hall"\n'
        "[thresholds]\ntemperature_c = { warn = 70, crit = 78 }\n",
    )
    write(home.profiles_dir / "press-hmi.toml", 'name = "press-hmi"\ndescription = "Press HMI panel PC"\n')
    infos = {i.name: i for i in list_profiles()}
    assert set(infos) == set(BUNDLED) | {"press-hmi"}
    assert infos["raspberry-pi-5"].source == "user"
    assert infos["raspberry-pi-5"].path == home.profiles_dir / "raspberry-pi-5.toml"
    assert infos["raspberry-pi-5"].description == "Pi 5 in the hot press hall"
    assert infos["x86-ipc"].source == "bundled"
    assert get_profile("raspberry-pi-5").thresholds.temperature_c == Threshold(warn=70, crit=78)
    assert get_profile("press-hmi").description == "Press HMI panel PC"


def test_broken_user_profile_is_listed_with_its_error(home: Home) -> None:
    write(home.profiles_dir / "broken.toml", 'name = "broken"\n')
    infos = {i.name: i for i in list_profiles(home)}
    assert infos["broken"].error and "description: missing" in infos["broken"].error
    with pytest.raises(ConfigError, match="description: missing"):
        get_profile("broken", home)


def test_unknown_profile_lists_available(home: Home) -> None:
    with pytest.raises(ConfigError) as info:
        get_profile("raspbery-pi-5", home)
    msg = info.value.message
    assert msg.startswith('unknown profile "raspbery-pi-5"; available: ')
    for name in BUNDLED:
        assert name in msg
    assert info.value.hint == 'did you mean "raspberry-pi-5"?'


def test_profile_model_has_field_descriptions() -> None:
    schema = Profile.model_json_schema()
    assert "description" in schema["properties"]["name"]
    for model in ("TransportDefaults", "DevicePaths", "MemoryPolicy", "UseCase", "Thresholds"):
        for key, prop in schema["$defs"][model]["properties"].items():
            assert prop.get("description"), f"{model}.{key}"
