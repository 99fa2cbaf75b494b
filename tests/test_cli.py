"""The CLI package: one registration style, reserved words in the device-name position."""

from __future__ import annotations

import argparse
import json

import pytest

from conftest import run_cli
from fieldkit.cli import build_parser
from fieldkit.cli import bench as cli_bench
from fieldkit.inventory import RESERVED_DEVICE_NAMES


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaf_parsers(child, path + (name,))


def test_every_command_sets_a_handler() -> None:
    parser = build_parser()
    leaves = list(_leaf_parsers(parser))
    assert {p[0] for p, _ in leaves} >= {"demo", "sim", "health", "trust", "devices", "profiles", "bench", "init",
                                          "audit"}
    for path, leaf in leaves:
        assert callable(leaf.get_default("handler")), f"`fieldkit {' '.join(path)}` has no handler"


def test_bench_actions_are_reserved_device_names() -> None:
    assert set(cli_bench.ACTIONS) <= set(RESERVED_DEVICE_NAMES)


def test_device_named_after_a_reserved_word_is_refused(tmp_path) -> None:
    proc = run_cli("devices", "add", "list", "ssh://pi@10.0.0.7")
    assert proc.returncode == 2, proc.stderr
    assert ("'list' is a reserved word: `fieldkit bench list` would be ambiguous; choose another name"
            in proc.stderr)
    assert json.loads(run_cli("devices", "list", "--json").stdout)["devices"] == []
    for word in sorted(RESERVED_DEVICE_NAMES):
        proc = run_cli("devices", "add", word, f"local:{tmp_path}")
        assert proc.returncode == 2 and f"'{word}' is a reserved word" in proc.stderr, (word, proc.stderr)
    assert run_cli("devices", "add", "list-2", f"local:{tmp_path}").returncode == 0  # only the exact word


def test_bench_list_still_works() -> None:
    proc = run_cli("bench", "list")
    assert proc.returncode == 0, proc.stderr
    assert "no saved bench reports" in proc.stdout
    proc = run_cli("bench", "list", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"reports": []}


@pytest.mark.parametrize(("args", "usage"), [
    (("list", "extra"), "usage: fieldkit bench list [--json]"),
    (("compare", "a"), "usage: fieldkit bench compare A B"),
    (("line3-cam",), "usage: fieldkit bench TARGET MODEL [options]"),
])
def test_bench_wrong_number_of_words_is_a_usage_error(args: tuple[str, ...], usage: str) -> None:
    proc = run_cli("bench", *args)
    assert proc.returncode == 2 and usage in proc.stderr, proc.stderr
