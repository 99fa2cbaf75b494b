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
