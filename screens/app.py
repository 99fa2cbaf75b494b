"""The fieldkit TUI. Built by :func:`build_app` (tests call it too); every device operation is
a fieldkit core call made from a thread worker."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.screen import Screen

from screens.actions import APP, bindings


class FieldkitApp(App[None]):
    CSS_PATH = "fieldkit.tcss"
    TITLE = "fieldkit"
    BINDINGS = bindings(APP)
    # Screen classes by width: -narrow below 100 columns (an 80x24 laptop terminal), -wide to 139,
    # -very-wide from 140; side panels and second form rows follow them in fieldkit.tcss
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide"), (140, "-very-wide")]

    def __init__(self, home: Any, *, fleet_refresh_s: float = 10.0, ready_marker: Path | None = None,
                 site_manifest: Any = None, clock: Callable[[], float] | None = None) -> None:
        """``site_manifest``: a verified :class:`fieldkit.manifest.Manifest`; None loads the one remembered
        in the home (``fieldkit --manifest``), verified again (see :meth:`load_site_manifest`).
        ``clock``: the wall clock times of day on screen come from (snapshot tests fix it)."""
        super().__init__()
        self.clock = clock or time.time
        self.home = home
        self.site_manifest = site_manifest
        self.fleet_refresh_s = fleet_refresh_s
        self.ready_marker = ready_marker
        self._started = time.monotonic()

    def get_default_screen(self) -> Screen:
        """The fleet is the first screen itself, not pushed over an empty default one: one screen less
        to build and lay out before the devices show (docs/performance.md)."""
        from screens.fleet import FleetScreen

        if self.site_manifest is None and self.home.site_manifest.exists():
            self.site_manifest = self.load_site_manifest()  # none remembered: its code is not even imported
        return FleetScreen(self.home, refresh_s=self.fleet_refresh_s, manifest=self.site_manifest)

    def on_mount(self) -> None:
        from screens.styles import tilde

        self.sub_title = tilde(self.home.root)
        # The journal (and its signing code) is opened once the fleet's rows are on the terminal (two
        # refreshes: see FleetScreen.on_mount): a cold start shows the devices first (docs/performance.md).
        self.call_after_refresh(self.call_after_refresh, self.check_identity)

    def check_identity(self) -> None:
        """No operator identity yet: ask for one (every device operation is signed by it)."""
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import IdentityMissing, load_identity

        try:
            load_identity(self.home)
        except IdentityMissing:
            self.ask_identity()
        except FieldkitError as exc:
            self.notify(str(exc), severity="error", timeout=15)

    def load_site_manifest(self) -> Any:
        """The remembered site manifest, verified again with its remembered key; when it no longer
        verifies (or a file is gone) the TUI opens without it and says why."""
        from fieldkit.errors import FieldkitError
        from fieldkit.versions import remembered_manifest

        try:
            return remembered_manifest(self.home)
        except FieldkitError as exc:
            self.notify(f"the remembered site manifest is not loaded: {exc}", title="Site manifest",
                        severity="error", timeout=20)
            return None

    def ask_identity(self) -> None:
        """First run: every device operation is signed and recorded, so ask who is working."""
        from screens.modals import IdentityModal

        def done(result: dict | None) -> None:
            if result:
                self.notify(f"operator {result['operator']} ({result['key_fingerprint']}); journal started",
                            title="Welcome")
                screen = self.screen
                if hasattr(screen, "action_refresh"):
                    screen.action_refresh()
            else:
                self.notify("no operator identity: devices cannot be reached until you set one "
                            "(or run `fieldkit init --operator NAME`)", severity="warning", timeout=10)

        self.push_screen(IdentityModal(self.home), done)
        if self.ready_marker is not None:
            self.call_after_refresh(self._mark_ready)

    def _mark_ready(self) -> None:
        """Used by scripts/bench/tui_startup.py: the first screen is painted with devices listed."""
        assert self.ready_marker is not None
        self.ready_marker.write_text(f"{time.time():.6f}\n")
        self.exit()

    def clock_text(self, ts: float | None = None) -> str:
        """A time of day as the screens show it (local time): ``ts``, or now by the app's clock."""
        return time.strftime("%H:%M:%S", time.localtime(self.clock() if ts is None else ts))

    # ---- help and the command palette, both from the live bindings --------------------------------
    def _screen_actions(self, screen: Screen) -> list[tuple[str, str, str, str, Any]]:
        rows = []
        seen = set()
        for key, active in screen.active_bindings.items():
            b = active.binding
            if b.action in seen or not active.enabled or not b.id:
                continue  # only the registry's actions (widget navigation keys stay out of the way)
            seen.add(b.action)
            rows.append((b.key_display or self.get_key_display(b), b.description, b.tooltip or "", b.action, active.node))
        return rows

    def action_help(self) -> None:
        from screens.modals import HelpModal

        screen = self.screen
        if isinstance(screen, HelpModal):
            return
        rows = [(k, d, t) for k, d, t, _, _ in self._screen_actions(screen)]
        self.push_screen(HelpModal(screen.title or screen.id or "fieldkit", rows))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The screen's actions (naming the device they act on, when the screen says), then Textual's
        own commands less the ones this app already offers (one "Quit", not two)."""
        ours = set()
        subject = getattr(screen, "palette_subject", None)
        for key, desc, tip, action, node in self._screen_actions(screen):
            if action in ("command_palette",):
                continue
            ours.add(desc.casefold())
            on = subject(action) if subject is not None else None
            title = f"{desc} {on} ({key})" if on else f"{desc} ({key})"
            yield SystemCommand(title, tip or desc, partial(self.run_action, action, node))
        for command in super().get_system_commands(screen):
            if command.title.casefold() not in ours:
                yield command

    # ---- host keys: one place for the trust dialogs ------------------------------------------------
    def ask_host_key(self, device: str, target: str, exc: Any, on_trusted: Callable[[], None] | None = None) -> None:
        from screens.modals import ChangedKeyModal, TrustModal

        if exc.changed:
            self.push_screen(ChangedKeyModal(device, exc.message))
            return

        def decided(accept: bool | None) -> None:
            if accept:
                self.pin_host_key(device, target, exc.fingerprint, on_trusted)
            else:
                self.record_decline(device, exc.fingerprint)
                self.notify(f"{device}: host key not trusted; nothing was saved", severity="warning")

        self.push_screen(TrustModal(device, exc.host, exc.key_type, exc.fingerprint), decided)

    @work(thread=True, group="trust")
    def pin_host_key(self, device: str, target: str, fingerprint: str, on_trusted: Callable[[], None] | None) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.devices import trust_device

        try:
            res = trust_device(self.home, device, fingerprint=fingerprint)
        except FieldkitError as exc:
            self.call_from_thread(self.notify, str(exc), title="Not trusted", severity="error", timeout=10)
            return
        self.call_from_thread(self.notify, f"{device}: {res.key_type} {res.fingerprint} pinned", title="Trusted")
        if on_trusted:
            self.call_from_thread(on_trusted)

    @work(thread=True, group="trust")
    def record_decline(self, device: str, fingerprint: str) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.devices import record_decline

        try:
            record_decline(self.home, device, fingerprint)
        except FieldkitError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error")

    @work(thread=True, group="trust")
    def check_host_key(self, device: str) -> None:
        from fieldkit.devices import check_host_key, resolve
        from fieldkit.errors import FieldkitError, HostKeyError

        try:
            known = check_host_key(self.home, device, connect_timeout=10.0)
            if known is None:
                self.call_from_thread(self.notify, f"{device} is not an SSH device: no host key", timeout=4)
                return
            _key_type, fp = known
        except HostKeyError as exc:
            try:
                target = resolve(device, self.home).target
            except FieldkitError:
                target = device
            self.call_from_thread(self.ask_host_key, device, target, exc)
            return
        except FieldkitError as exc:
            self.call_from_thread(self.notify, str(exc), title=device, severity="error", timeout=8)
            return
        self.call_from_thread(self.notify, f"{device}: host key {fp} is already trusted", title="Trusted")


def build_app(home: Any, **kw: Any) -> FieldkitApp:
    return FieldkitApp(home, **kw)


def run(home: Any) -> int:
    marker = os.environ.get("FIELDKIT_TUI_READY_FILE")
    app = build_app(home.ensure(), ready_marker=Path(marker) if marker else None)
    app.run(headless=bool(marker))
    return 0
