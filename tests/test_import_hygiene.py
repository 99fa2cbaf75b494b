"""The core never loads the UI (textual, rich), and the CLI's non-UI paths start light."""

from __future__ import annotations

import json
import subprocess
import sys

CORE_MODULES = [
    "fieldkit", "fieldkit.cli", "fieldkit.devices", "fieldkit.health", "fieldkit.bench", "fieldkit.journal",
    "fieldkit.profiles", "fieldkit.inventory", "fieldkit.signing", "fieldkit.checks", "fieldkit.wire",
    "fieldkit.link.connect", "fieldkit.link.client", "fieldkit.link.ssh", "fieldkit.link.hostkeys",
    "fieldkit.link.trust", "fieldkit.sim", "fieldkit.agent.server", "fieldkit.agent.arq",
]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_does_not_import_ui() -> None:
    mods = _loaded_after("\n".join(f"import {m}" for m in CORE_MODULES))
    ui = {m for m in mods if m.split(".")[0] in ("textual", "rich", "screens")}
    assert not ui, f"core imported UI modules: {sorted(ui)[:10]}"


def test_cli_help_paths_stay_light() -> None:
    mods = _loaded_after("from fieldkit.cli import build_parser\nbuild_parser().format_help()")
    heavy = {m.split(".")[0] for m in mods} & {"textual", "rich", "onnxruntime", "paramiko", "numpy", "serial"}
    assert not heavy, f"`fieldkit --help` loads {sorted(heavy)}"


def test_agent_core_is_stdlib_only() -> None:
    code = (
        "import sys\n"
        "import fieldkit.agent.server, fieldkit.agent.arq, fieldkit.agent.probes, fieldkit.agent.__main__\n"
        "probe = fieldkit.agent.probes.module_versions()\n"
    )
    mods = _loaded_after(code)
    third = {m.split(".")[0] for m in mods} & {"psutil", "onnxruntime", "numpy", "cryptography", "paramiko",
                                                 "serial", "pydantic", "textual"}
    assert not third, f"agent core imports {sorted(third)}"


def test_tui_first_screen_stays_light(tmp_path) -> None:
    """`fieldkit` alone: when the fleet's rows go into the table (its first paint), none of what
    polling devices needs is loaded yet (the link code, the journal's signing, the profile models,
    the command modules): those load after the rows are on screen (docs/performance.md)."""
    import os

    env = dict(os.environ, FIELDKIT_HOME=str(tmp_path / "home"))
    subprocess.run([sys.executable, "-m", "fieldkit", "devices", "add", "cam-1", f"local:{tmp_path}"], env=env,
                   check=True, capture_output=True, timeout=60)
    code = """
import json, sys
from fieldkit.cli import main
import screens.app, screens.fleet

first = {}
rebuild = screens.fleet.FleetScreen.rebuild_table
def watched(self):
    rebuild(self)
    if not first:
        first["rows"] = self.query_one("#devices").row_count
        first["modules"] = sorted(sys.modules)
        self.app.call_later(self.app.exit)
screens.fleet.FleetScreen.rebuild_table = watched
run = screens.app.FieldkitApp.run
screens.app.FieldkitApp.run = lambda self, **kw: run(self, headless=True)
main([])
print(json.dumps(first))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    first = json.loads(out.stdout.strip().splitlines()[-1])
    assert first["rows"] == 1
    loaded = set(first["modules"])
    heavy = {m for m in loaded if m.split(".")[0] in ("paramiko", "cryptography", "pydantic", "ecdsa", "numpy",
                                                      "onnxruntime", "serial", "sqlite3")}
    ours = {m for m in loaded if m.startswith(("fieldkit.link", "fieldkit.journal", "fieldkit.profiles",
                                               "fieldkit.devices", "fieldkit.health", "fieldkit.wire", "fieldkit.cli."))
            and m != "fieldkit.cli.demo"}
    assert not heavy and not ours, f"loaded before the first paint: {sorted(heavy | ours)}"
