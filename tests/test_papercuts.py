"""What a technician hits in the first hour on the command line: empty inventories, mistyped
names, nonsense targets, help that hides commands, usage errors that show the wrong usage, exports
to a folder that is not there, and scripts that need what the plain install does not bring."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from fieldkit.cli import build_parser, main
from fieldkit.devices import resolve
from fieldkit.errors import ConfigError
from fieldkit.inventory import add_device, target_warning
from fieldkit.journal import Journal


# ---- health: an empty inventory, a name that is not in it -----------------------------------------------
def test_health_all_on_an_empty_inventory_says_how_to_add_a_device(home) -> None:
    proc = run_cli("health", "--all")
    assert proc.returncode == 2, proc.stderr
    assert "the inventory" in proc.stderr and "is empty" in proc.stderr, proc.stderr
    assert "fieldkit devices add NAME TARGET" in proc.stderr and "fieldkit demo" in proc.stderr
    assert "no device given" not in proc.stderr


def test_health_of_a_name_not_in_the_inventory_says_so_before_any_lookup(home, tmp_path: Path) -> None:
    assert run_cli("devices", "add", "line3-cam", f"local:{tmp_path}").returncode == 0
    proc = run_cli("health", "lin3-cam")
    assert proc.returncode == 2, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first == 'fieldkit: "lin3-cam" is not in the inventory; did you mean line3-cam?', proc.stderr
    assert "ssh://lin3-cam" in proc.stderr  # how to mean a host of that name after all
    assert "resolve" not in proc.stderr and "DNS" not in proc.stderr
    proc = run_cli("health", "nothing-alike", "--json")
    assert proc.returncode == 2 and '"nothing-alike" is not in the inventory (which has line3-cam)' in proc.stderr
    assert proc.stdout == ""


def test_a_bare_word_not_in_the_inventory_is_a_host_only_when_something_names_it(home, isolated_home: Path) -> None:
    cfg = isolated_home.parent / "ssh_config"
    cfg.write_text("Host cam-*\n  User pi\nHost gw !gw-old\n  HostName 10.0.0.1\nHost *\n  ServerAliveInterval 5\n")
    with pytest.raises(ConfigError) as info:
        resolve("press-07", home)
    assert info.value.message == '"press-07" is not in the inventory: the inventory is empty'
    assert "fieldkit devices add NAME TARGET" in info.value.hint and "fieldkit demo" in info.value.hint
    for word in ("gw-old", "lin3-cam"):  # `Host *` and an excluded pattern name no host
        with pytest.raises(ConfigError, match="is not in the inventory"):
            resolve(word, home)
    # what names a host is tried as one (no lookup happens here: resolving only parses)
    assert resolve("cam-07", home).target == "cam-07"  # a Host pattern of the SSH config
    assert resolve("gw", home).target == "gw"
    assert resolve("pi@press-07", home).target == "ssh://pi@press-07"  # user@host: `health user@host` works
    assert resolve("ssh://press-07", home).target == "ssh://press-07"  # the explicit form, always
    assert resolve("press-07.plant.example", home).target == "press-07.plant.example"  # a dotted name
    assert resolve("10.0.0.7", home).target == "10.0.0.7"
    add_device(home, "press-07", "ssh://pi@10.0.0.7")
    assert resolve("press-07", home).target == "ssh://pi@10.0.0.7"  # the inventory comes first


# ---- devices add: a target that is most likely a mistake ------------------------------------------------
def test_devices_add_warns_about_a_target_nothing_names(home, tmp_path: Path, isolated_home: Path) -> None:
    proc = run_cli("devices", "add", "x", "notatarget")
    assert proc.returncode == 0, proc.stderr  # kept: DNS or a later ~/.ssh/config entry may make it a host
    assert proc.stderr.startswith('fieldkit: warning: x: target "notatarget" is not ssh://, serial://, local: '
                                  "or user@host"), proc.stderr
    cfg = str(isolated_home.parent / "ssh_config")
    assert f"no Host in {cfg}" in proc.stderr and "serial:///dev/ttyUSB0" in proc.stderr
    assert [d["target"] for d in json.loads(run_cli("devices", "list", "--json").stdout)["devices"]] == ["notatarget"]

    (isolated_home.parent / "ssh_config").write_text("Host line3-*\n  User pi\n")
    for target in ("ssh://pi@10.0.0.7", "serial:///dev/ttyUSB0?baud=115200", f"local:{tmp_path}", "local:",
                   "pi@cam", "cam.plant.example", "10.0.0.7", "line3-cam"):
        assert target_warning(target) is None, target
    assert "notatarget" in (target_warning("notatarget") or "")
    proc = run_cli("devices", "add", "y", "line3-cam", "--profile", "generic-linux")  # no attempt to reach it
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# ---- help and usage errors ------------------------------------------------------------------------------
def _subcommand_groups(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield path, action
            for name, child in action.choices.items():
                yield from _subcommand_groups(child, path + (name,))


def test_every_group_lists_all_its_subcommands_in_its_help() -> None:
    groups = list(_subcommand_groups(build_parser()))
    assert len(groups) > 8
    for path, action in groups:
        listed = {a.dest for a in action._choices_actions}
        assert listed == set(action.choices), f"`fieldkit {' '.join(path)} --help` leaves out " \
                                              f"{sorted(set(action.choices) - listed)}"
    proc = run_cli("profiles", "--help")
    assert proc.returncode == 0
    for action in ("list", "show", "check"):
        assert f"\n    {action} " in proc.stdout, proc.stdout


@pytest.mark.parametrize(("argv", "usage"), [
    (["devices", "list", "--bogus"], "usage: fieldkit devices list [-h] [--json]"),
    (["devices", "--bogus"], "usage: fieldkit devices [-h]"),
    (["audit", "show", "--bogus"], "usage: fieldkit audit show [-h]"),
    (["audit", "export", "--out", "x.json", "--bogus"], "usage: fieldkit audit export [-h]"),
    (["health", "--bogus"], "usage: fieldkit health [-h]"),
    (["profiles", "show", "generic-linux", "--bogus"], "usage: fieldkit profiles show [-h]"),
    (["bench", "list", "--bogus"], "usage: fieldkit bench TARGET MODEL [options]"),
    (["release", "keygen", "--out", "k.pem", "--bogus"], "usage: fieldkit release keygen [-h]"),
    (["devices", "add", "a", "local:", "extra"], "usage: fieldkit devices add [-h]"),
])
def test_a_bad_word_after_a_subcommand_shows_the_subcommands_usage(argv: list[str], usage: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"unrecognized arguments: {argv[-1]}" in err
    assert "COMMAND ..." not in err  # not the top-level usage


def test_a_bad_word_before_any_command_still_shows_the_top_level_usage(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--bogus", "devices"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fieldkit [-h]") and "unrecognized arguments: --bogus" in err


# ---- audit export: the folder must exist ----------------------------------------------------------------
def test_audit_export_refuses_a_folder_that_does_not_exist(home, tmp_path: Path) -> None:
    with Journal.open(home) as journal:
        before = len(journal.checkpoints())
    out = tmp_path / "media" / "usb0" / "audit.json"  # a mistyped USB mount point
    proc = run_cli("audit", "export", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert f"the folder {out.parent} does not exist; nothing was written" in proc.stderr
    assert "USB stick" in proc.stderr
    assert not (tmp_path / "media").exists()
    with Journal.open(home) as journal:
        assert len(journal.checkpoints()) == before  # not even the export's checkpoint
    proc = run_cli("audit", "export", "--out", str(tmp_path))
    assert proc.returncode == 2 and "it is a folder" in proc.stderr
    proc = run_cli("audit", "export", "--out", str(tmp_path / "audit.json"))
    assert proc.returncode == 0, proc.stderr
    assert run_cli("audit", "verify", "--bundle", str(tmp_path / "audit.json")).returncode == 0


# ---- scripts/ after the README's plain install ----------------------------------------------------------
HIDDEN = ("onnx", "model_signing", "OpenSSL", "pytest", "_pytest", "hypothesis", "importlinter")
"""What the test extra brings and a plain `pip install .` does not (the scripts extra brings the first three)."""

BLOCKER = f"""
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDDEN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def _plain_install(tmp_path: Path) -> dict:
    """An environment where the test-only packages cannot be imported (in this process's children too)."""
    import os

    site = tmp_path / "plain-install"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return dict(os.environ, PYTHONPATH=str(site))


SCRIPTS = sorted(p for p in [*ROOT.glob("scripts/*.py"), *ROOT.glob("scripts/bench/*.py")] if not p.name.startswith("_"))


def test_scripts_extra_brings_what_the_scripts_import() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {req.split(">")[0].split("=")[0].split("<")[0].strip().lower() for req in extras["scripts"]}
    assert {"onnx", "model-signing", "pyopenssl"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_starts_after_a_plain_install(script: Path, tmp_path: Path) -> None:
    """Its help, or one line saying what to install (never a traceback)."""
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT), env=_plain_install(tmp_path))
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode == 2:
        assert "pip install -e '.[scripts]'" in proc.stderr, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]


def test_make_models_names_the_extra_it_needs(tmp_path: Path) -> None:
    env = _plain_install(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_models.py"), str(tmp_path / "models")],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "needs the onnx package" in proc.stderr and "pip install -e '.[scripts]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("script", ["bench_overhead.py", "install.py", "release_sign.py", "rollout.py", "versions.py"])
def test_benchmarks_name_the_extra_they_need(script: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / script), "--tiny", "--json"],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=_plain_install(tmp_path))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{script} cannot run here, missing:" in proc.stderr and "pip install -e '.[scripts]'" in proc.stderr
    assert "Traceback" not in proc.stderr
