"""``fieldkit models DEVICE`` (what is installed), ``models verify DEVICE [NAME]`` (re-hash on the
device), ``models remove DEVICE NAME VERSION`` (never the active one).

``verify`` and ``remove`` are reserved words: no device may be named after them
(``fieldkit.inventory.RESERVED_DEVICE_NAMES``)."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from fieldkit.cli.common import confirm, emit_json, open_device
from fieldkit.errors import ConfigError
from fieldkit.locations import Home
from fieldkit.textfmt import table

USAGE = """fieldkit models DEVICE [--json]
       fieldkit models verify DEVICE [NAME] [--json]
       fieldkit models remove DEVICE NAME VERSION [--yes]"""


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("models", help="models installed on a device; verify or remove them", usage=USAGE)
    s.add_argument("words", nargs="+", metavar="DEVICE | verify DEVICE [NAME] | remove DEVICE NAME VERSION")
    s.add_argument("--json", action="store_true")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation (remove)")
    s.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace, home: Home) -> int:
    word, *operands = args.words
    action = ACTIONS.get(word)
    if action is None:
        if operands:
            raise ConfigError(f"usage: {USAGE}")
        return cmd_list(args, home, word)
    handler, arities = action
    if len(operands) not in arities:
        raise ConfigError(f"usage: {USAGE}")
    return handler(args, home, *operands)


def cmd_list(args: argparse.Namespace, home: Home, device: str) -> int:
    from fieldkit.modelstore import list_models

    with open_device(device, home) as session:
        doc = list_models(session)
    if args.json:
        emit_json(doc)
        return 0
    if not doc["models"]:
        print(f"no models installed on {doc['device']}; `fieldkit install {doc['device']} DIR` installs one")
        return 0
    print(table(["MODEL", "ACTIVE", "PREVIOUS", "INSTALLED", "FLOOR", "STATE", "SIGNER"],
                [[m["name"], m["active"] or "-", m["previous"] or "-", ", ".join(m["installed"]), m["floor"],
                  m["state"], (m["signer"] or "-")[:20]] for m in doc["models"]]))
    return 0


def cmd_verify(args: argparse.Namespace, home: Home, device: str, name: str | None = None) -> int:
    from fieldkit.modelstore import verify_models

    with open_device(device, home) as session:
        doc = verify_models(session, name)
    if args.json:
        emit_json(doc)
    else:
        print(table(["MODEL", "VERSION", "OK", "PROBLEM"],
                    [[c["name"], c["version"], "yes" if c["ok"] else "NO", "; ".join(c["problems"])]
                     for c in doc["models"]]) if doc["models"] else f"no models installed on {device}")
    return 0 if doc["ok"] else 1


def cmd_remove(args: argparse.Namespace, home: Home, device: str, name: str, version: str) -> int:
    from fieldkit.modelstore import remove_model

    with open_device(device, home) as session:
        if not confirm(f"remove {name} {version} from {device}?", yes=args.yes):
            return 130
        doc = remove_model(session, name, version)
    if args.json:
        emit_json(doc)
    else:
        print(f"removed {name} {doc['removed']} from {device}")
    return 0


ACTIONS: dict[str, tuple[Callable[..., int], tuple[int, ...]]] = {
    "verify": (cmd_verify, (1, 2)),
    "remove": (cmd_remove, (3,)),
}
