"""The fleet's model column held against a signed site manifest (`fieldkit --manifest FILE`): Pilot
against real `local:` devices running the real agent, with real signed releases installed and a real
signed manifest; the real CLI refusing a manifest that does not verify."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import run_cli, wait_for
from models import models  # noqa: F401  (session fixture)
from rich.text import Text
from textual.widgets import DataTable, Static

from fieldkit.devices import open_session
from fieldkit.install import install_release
from fieldkit.inventory import add_device
from fieldkit.locations import Home
from fieldkit.manifest import create_manifest, verify_manifest
from fieldkit.modelstore import add_anchor, read_public_key
from fieldkit.release import create_release, keygen
from fieldkit.sim import make_device_root
from fieldkit.versions import remember_manifest, remembered_paths
from screens.app import build_app
from screens.fleet import FleetScreen

SITE = '[[expect]]\ngroup = "line3"\nmodel = "anomaly"\nversion = "1.0.0"\n'


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "rel.pem")


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "other.pem")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, key, models) -> dict:  # noqa: F811
    base = tmp_path_factory.mktemp("releases")
    return {v: create_release(models["anomaly-tabular"], name="anomaly", version=v, security_version=1, smoke_random=2,
                              key_path=key.private, out_dir=base / f"anomaly-{v}") for v in ("1.0.0", "2.0.0")}


@pytest.fixture
def site(tmp_path: Path, key) -> Path:
    src = tmp_path / "site.toml"
    src.write_text(SITE)
    out = tmp_path / "site.manifest.json"
    create_manifest(src, key.private, out)
    return out


@pytest.fixture
def fleet(home: Home, tmp_path: Path, key, releases) -> dict[str, Path]:
    """cam-ok runs anomaly 1.0.0 (as the manifest expects), cam-drift runs 2.0.0; both in group line3."""
    roots = {}
    pem, fp = read_public_key(key.public)
    for name, version in (("cam-ok", "1.0.0"), ("cam-drift", "2.0.0")):
        root = make_device_root(tmp_path / name)
        add_device(home, name, f"local:{root}", groups=["line3"])
        with open_session(name, home) as session:
            add_anchor(session, pem, fp)
            res = install_release(session, releases[version].directory)
            assert res.result == "committed", res.message
        roots[name] = root
    return roots


def model_cell(app, device: str) -> str:
    return str(app.screen.query_one("#devices", DataTable).get_cell(device, "model"))


def plain(markup: str) -> str:
    return Text.from_markup(markup).plain


def status_line(app) -> str:
    return plain(str(app.screen.query_one("#fleet-status", Static).render()))


async def test_model_column_is_coloured_by_the_remembered_manifest(home: Home, fleet, site: Path, key) -> None:
    manifest = verify_manifest(site, [key.public])
    remember_manifest(home, manifest, key.public)
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(160, 30)) as pilot:
        assert isinstance(app.screen, FleetScreen)
        assert app.site_manifest is not None and app.site_manifest.sha256 == manifest.sha256
        await wait_for(pilot, lambda: all(plain(model_cell(app, d)) for d in fleet), what="the model column")
        ok, drift = model_cell(app, "cam-ok"), model_cell(app, "cam-drift")
        assert ok.startswith("[green]") and plain(ok) == "anomaly 1.0.0 ok", ok
        assert drift.startswith("[red]") and plain(drift) == "anomaly 2.0.0 drift (1.0.0 expected)", drift
        line = status_line(app)
        assert "manifest site.manifest.json" in line and manifest.signer in line, line


async def test_without_a_manifest_the_column_is_as_before(home: Home, fleet) -> None:
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(160, 30)) as pilot:
        await wait_for(pilot, lambda: all(model_cell(app, d) for d in fleet), what="the model column")
        assert model_cell(app, "cam-ok") == "anomaly 1.0.0" and model_cell(app, "cam-drift") == "anomaly 2.0.0"
        assert "manifest" not in status_line(app)


async def test_a_remembered_manifest_that_no_longer_verifies_is_not_loaded(home: Home, fleet, site: Path, key) -> None:
    remember_manifest(home, verify_manifest(site, [key.public]), key.public)
    env = json.loads(site.read_text())  # altered after it was remembered: another version expected
    doc = json.loads(base64.b64decode(env["payload"]))
    doc["entries"][0]["version"] = "2.0.0"
    env["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    site.write_text(json.dumps(env))
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(160, 30)) as pilot:
        assert app.site_manifest is None
        notes = [n.message for n in app._notifications]
        assert any("remembered site manifest is not loaded" in m and "does not verify" in m for m in notes), notes
        await wait_for(pilot, lambda: all(model_cell(app, d) for d in fleet), what="the model column")
        assert model_cell(app, "cam-drift") == "anomaly 2.0.0"  # plain: no manifest
        assert "manifest" not in status_line(app)


def test_cli_refuses_a_manifest_that_does_not_verify(home: Home, site: Path, key, other_key, tmp_path: Path) -> None:
    proc = run_cli("--manifest", str(site), "--manifest-key", str(other_key.public))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "site manifest" in proc.stderr and "not the key given" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not home.site_manifest.exists()  # never remembered

    proc = run_cli("--manifest", str(site))  # no key given, none remembered
    assert proc.returncode == 2 and "--manifest-key" in proc.stderr, proc.stderr

    proc = run_cli("--manifest", str(site), "health", "--all")
    assert proc.returncode == 2 and "without a command" in proc.stderr, proc.stderr


@pytest.mark.no_identity  # the headless start marks itself ready at the identity dialog, then exits
def test_cli_remembers_a_verified_manifest_and_refuses_it_once_altered(home: Home, site: Path, key,
                                                                       tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = run_cli("--manifest", str(site), "--manifest-key", str(key.public),
                   env={"FIELDKIT_TUI_READY_FILE": str(ready)})
    assert proc.returncode == 0 and ready.exists(), proc.stderr
    assert remembered_paths(home) == (site.resolve(), key.public.resolve())

    site.write_text(site.read_text().replace('"sig": "', '"sig": "AAAA'))
    ready.unlink()
    proc = run_cli("--manifest", str(site), env={"FIELDKIT_TUI_READY_FILE": str(ready)})  # the remembered key
    assert proc.returncode == 1 and "site manifest" in proc.stderr, proc.stderr
    assert not ready.exists()  # no TUI with an unverified manifest
