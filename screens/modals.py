"""Modal dialogs: host-key trust, changed host key, confirmation, add device, help, the whole text of a
row (DetailModal), release picker."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, DataTable, DirectoryTree, Input, Label, Static

from screens.actions import RELEASE_PICKER, RESUME, bindings


class TrustModal(ModalScreen[bool]):
    """An unknown SSH host: show what it presents, let the technician accept or decline."""

    BINDINGS = [Binding("escape", "decline", "Decline", id="trust.decline", tooltip="Do not trust this key"),
                Binding("y", "accept", "Trust", id="trust.accept", tooltip="Pin this host key")]

    def __init__(self, device: str, host: str, key_type: str, fingerprint: str) -> None:
        super().__init__(classes="dialog-screen")
        self.device, self.host, self.key_type, self.fingerprint = device, host, key_type, fingerprint

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="trust"):
            yield Label(f"Unknown device: {self.device}", classes="title")
            yield Static(f"Host          {self.host}\nKey type      {self.key_type}\n"
                         f"Fingerprint   {self.fingerprint}", id="fingerprint")
            yield Static("Compare the fingerprint with the device's label or its console "
                         "(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`). Trust it only if they match.",
                         classes="explain")
            with Horizontal(classes="buttons"):
                yield Button("Trust (y)", id="accept", variant="success")
                yield Button("Decline (Esc)", id="decline", variant="default")

    @on(Button.Pressed, "#accept")
    def action_accept(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#decline")
    def action_decline(self) -> None:
        self.dismiss(False)


class ChangedKeyModal(ModalScreen[None]):
    """A changed host key: loud, red, and no way to accept it from here."""

    BINDINGS = [Binding("escape", "close", "Close", id="changed.close", tooltip="Close this warning")]

    def __init__(self, device: str, message: str) -> None:
        super().__init__(classes="dialog-screen")
        self.device, self.message = device, message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="danger"):
            yield Label(f"HOST KEY CHANGED: {self.device}", classes="title")
            yield Static(self.message, id="changed-message")
            yield Static("Someone may be intercepting the connection, or the device was reflashed. "
                         "fieldkit will not connect. If the device was reflashed, check the new "
                         "fingerprint on its console, then run `fieldkit trust --replace TARGET`.",
                         classes="explain")
            with Horizontal(classes="buttons"):
                yield Button("Close (Esc)", id="close", variant="error")

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)


class ConfirmModal(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "no", "Cancel", id="confirm.no", tooltip="Keep things as they are"),
                Binding("y", "yes", "Yes", id="confirm.yes", tooltip="Go ahead")]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, classes="title")
            if self.detail:
                yield Static(self.detail, classes="explain")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("Cancel (Esc)", id="no")

    @on(Button.Pressed, "#yes")
    def action_yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_no(self) -> None:
        self.dismiss(False)


class ResumeModal(ModalScreen[str | None]):
    """This device has a stopped or unfinished checklist run: resume it, start a new one, or cancel
    (dismissed with "resume", "new" or None)."""

    BINDINGS = bindings(RESUME)

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, classes="title")
            if self.detail:
                yield Static(self.detail, classes="explain")
            with Horizontal(classes="buttons"):
                yield Button("Resume (r)", id="resume", variant="success")
                yield Button("Start new (s)", id="new")
                yield Button("Cancel (Esc)", id="cancel")

    @on(Button.Pressed, "#resume")
    def action_resume(self) -> None:
        self.dismiss("resume")

    @on(Button.Pressed, "#new")
    def action_new(self) -> None:
        self.dismiss("new")

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class AddDeviceModal(ModalScreen[Any]):
    """Name, target and profile; validated by the same core call the CLI uses before saving."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="add.cancel", tooltip="Close without saving")]

    def __init__(self, home: Any, profiles: list[str], *, name: str = "", target: str = "",
                 profile: str | None = None, note: str = "") -> None:
        """``name``, ``target``, ``profile`` prefill the form (the fleet's Scan: Enter saves it as found);
        ``note`` says where they came from."""
        super().__init__(classes="dialog-screen")
        self.home = home
        self.profiles = profiles
        self.prefill = (name, target, profile if profile in profiles else None, note)
        self.about: dict[str, str] = {}  # profile name -> its description, beside the list

    def compose(self) -> ComposeResult:
        from textual.widgets import OptionList
        from textual.widgets.option_list import Option

        name, target, profile, note = self.prefill
        with Vertical(id="dialog", classes="add-device"):
            yield Label("Add a device", classes="title")
            if note:
                yield Static(note, classes="explain", id="add-note")
            with Horizontal(classes="field"):
                yield Label("Name", classes="field-label")
                yield Input(name, placeholder="e.g. line3-cam", id="name")
            with Horizontal(classes="field"):
                yield Label("Target", classes="field-label")
                yield Input(target, placeholder="ssh://user@host · serial:///dev/ttyUSB0?baud=115200 · local:",
                            id="target")
            # A list in the form, not a dropdown: nothing unfolds over the buttons below it
            with Horizontal(id="profile-row"):
                yield Label("Profile", classes="field-label")
                yield OptionList(*[Option(p, id=p) for p in self.profiles], id="profile")
                yield Static("", id="profile-about")
            yield Static("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save (Enter)", id="save", variant="success")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        from textual.widgets import OptionList

        _, _, profile, _ = self.prefill
        default = profile or ("generic-linux" if "generic-linux" in self.profiles else None)
        box = self.query_one("#profile", OptionList)
        if self.profiles:
            box.highlighted = self.profiles.index(default) if default in self.profiles else 0
        self.about = self.describe_profiles()
        self.show_about()

    def describe_profiles(self) -> dict[str, str]:
        from fieldkit.errors import FieldkitError
        from fieldkit.profiles import list_profiles

        try:
            return {p.name: p.description or "" for p in list_profiles(self.home) if not p.error}
        except (FieldkitError, OSError):
            return {}

    @property
    def chosen_profile(self) -> str:
        """The highlighted profile (arrows move it; Enter on the list saves)."""
        from textual.widgets import OptionList

        box = self.query_one("#profile", OptionList)
        if box.highlighted is None:
            return "generic-linux"
        return str(box.get_option_at_index(box.highlighted).id)

    def show_about(self) -> None:
        if self.profiles:
            self.query_one("#profile-about", Static).update(self.about.get(self.chosen_profile, ""))

    def on_option_list_option_highlighted(self) -> None:
        self.show_about()

    def on_option_list_option_selected(self) -> None:
        self.save()

    @on(Input.Submitted)
    @on(Button.Pressed, "#save")
    def save(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.inventory import add_device

        name = self.query_one("#name", Input).value.strip()
        target = self.query_one("#target", Input).value.strip()
        profile = self.chosen_profile
        try:
            dev = add_device(self.home, name, target, profile=profile)
        except FieldkitError as exc:
            self.query_one("#error", Static).update(str(exc))
            return
        self.dismiss(dev)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpModal(ModalScreen[None]):
    """Generated from the live bindings of the screen underneath: never out of date."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help.close", tooltip="Close help")]

    def __init__(self, title: str, rows: list[tuple[str, str, str]]) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="help"):
            yield Label(f"Keys: {self.title_text}", classes="title")
            table: DataTable = DataTable(show_cursor=False, id="help-table")
            table.add_columns("Key", "Action", "What it does")
            for row in self.rows:
                table.add_row(*row)
            yield table
            yield Static("Ctrl+P opens the command palette with the same actions.", classes="explain")

    def action_close(self) -> None:
        self.dismiss(None)


class DetailModal(ModalScreen[None]):
    """The whole text behind one row (a check, a fleet device's problem, an audit entry), which a
    table cell on a small terminal can only show cut. ``fields``: (label, value) pairs, plain text;
    ``body``: plain text below them (several lines). Esc/Enter closes, c copies it (for a ticket)."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close", id="detail.close", tooltip="Close this view"),
                Binding("c", "copy", "Copy", id="detail.copy", tooltip="Copy the text to the clipboard (OSC 52)")]

    def __init__(self, title: str, fields: Iterable[tuple[str, str]] = (), body: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.fields = [(str(k), str(v)) for k, v in fields]
        self.body = body

    def compose(self) -> ComposeResult:
        from rich.table import Table
        from rich.text import Text
        from textual.containers import VerticalScroll

        with Vertical(id="dialog", classes="detail"):
            yield Label(Text(self.title_text), classes="title")
            with VerticalScroll(id="detail-scroll"):
                if self.fields:
                    grid = Table.grid(padding=(0, 2))
                    grid.add_column(style="bold", no_wrap=True)
                    grid.add_column(overflow="fold")
                    for label, value in self.fields:
                        grid.add_row(label, Text(value))
                    yield Static(grid, id="detail-fields")
                if self.body:
                    yield Static(Text(self.body), id="detail-body")
            with Horizontal(classes="buttons"):
                yield Button("Copy (c)", id="copy")
                yield Button("Close (Esc)", id="close", variant="primary")

    def text(self) -> str:
        """Everything shown, as plain text."""
        lines = [self.title_text] + [f"{k}: {v}" for k, v in self.fields]
        return "\n".join(lines + ([self.body] if self.body else []))

    @on(Button.Pressed, "#copy")
    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text())
        self.notify("copied (your terminal must allow OSC 52)", timeout=3)

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)


class IdentityModal(ModalScreen[Any]):
    """First-run dialog: the operator's name; fieldkit creates the signing key and the journal."""

    BINDINGS = [Binding("escape", "cancel", "Later", id="identity.cancel", tooltip="Skip for now")]

    def __init__(self, home: Any) -> None:
        super().__init__(classes="dialog-screen")
        self.home = home

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Who is working today?", classes="title")
            yield Static("Everything fieldkit does on a device is recorded in a signed, tamper-evident "
                         "journal under your name. Your signing key stays on this laptop.", classes="explain")
            yield Input(placeholder="your name or badge id, e.g. j.meyer", id="operator")
            yield Static("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Start", id="start", variant="success")
                yield Button("Later (Esc)", id="later")

    @on(Input.Submitted)
    @on(Button.Pressed, "#start")
    def start(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import setup_operator

        name = self.query_one("#operator", Input).value.strip()
        try:
            result = setup_operator(self.home, name)
        except (FieldkitError, ValueError) as exc:
            self.query_one("#error", Static).update(str(exc))
            return
        self.dismiss(result)

    @on(Button.Pressed, "#later")
    def action_cancel(self) -> None:
        self.dismiss(None)


class DirectorySuggester(Suggester):
    """Completes the last part of a typed path with a directory that exists (→ or End accepts)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        path = Path(value).expanduser()
        parent, stem = (path, "") if value.endswith("/") else (path.parent, path.name)
        if not stem and (parent / "release.json").is_file():
            return None  # a release directory: done, its smoke/ is not what anyone is looking for
        try:
            names = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith(stem)
                           and (stem.startswith(".") or not p.name.startswith(".")))
        except OSError:
            return None
        if not names or (names[0] == stem and len(names) == 1):
            return None
        return value + names[0][len(stem):] + "/"


class ReleaseTree(DirectoryTree):
    """Directories only: a release is a directory."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [p for p in paths if not p.name.startswith(".") and p.is_dir()]


class ReleasePickerModal(ModalScreen[Any]):
    """Pick a release directory: type a path (completed as you type) or walk the tree (Tab to it,
    Enter on a directory picks it). Shows what the release says it is before anything connects."""

    BINDINGS = bindings(RELEASE_PICKER)
    AUTO_FOCUS = "#release-path"

    def __init__(self, device: str, start: Path) -> None:
        super().__init__(classes="dialog-screen")
        self.device = device
        self.start = start if start.is_dir() else Path.cwd()

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="picker"):
            yield Label(f"Install a release on {self.device}", classes="title")
            yield Input(value=f"{self.start}/".replace("//", "/"), id="release-path",
                        placeholder="release directory (→ completes, Enter picks)", suggester=DirectorySuggester())
            yield ReleaseTree(self.start, id="release-tree")
            yield Static("", id="release-preview")
            yield Static("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Install (Ctrl+S)", id="install", variant="warning")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.preview(self.query_one("#release-path", Input).value)

    def describe(self, value: str) -> tuple[Path | None, str]:
        """(the release directory, a line saying what it is) — or (None, why not)."""
        from fieldkit.errors import FieldkitError
        from fieldkit.release import load_manifest

        path = Path(value.strip()).expanduser()
        if not value.strip() or not path.is_dir():
            return None, f"{path} is not a directory" if value.strip() else "type or pick a directory"
        if not (path / "release.json").is_file():
            return None, f"not a release: no release.json in {path}"
        try:
            m = load_manifest(path)
        except FieldkitError as exc:
            return None, f"not a usable release: {str(exc).splitlines()[0]}"
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        from fieldkit.textfmt import human_bytes

        signed = "signed" if any(path.glob("*.sig")) else "[red]no signature file[/]"
        return path, (f"[b]{m.name} {m.version}[/] · security version {m.security_version} · {m.model} · "
                      f"{human_bytes(size)} · {signed} (the signer is checked against {self.device}'s keys)")

    def preview(self, value: str) -> None:
        path, text = self.describe(value)
        self.query_one("#release-preview", Static).update(text if path else f"[dim]{text}[/]")
        self.query_one("#error", Static).update("")

    @on(Input.Changed, "#release-path")
    def _changed(self, event: Input.Changed) -> None:
        self.preview(event.value)

    @on(Input.Submitted, "#release-path")
    def _submitted(self, event: Input.Submitted) -> None:
        path = Path(event.value.strip()).expanduser()
        if path.is_dir() and not (path / "release.json").is_file():
            self.query_one("#release-tree", ReleaseTree).path = path  # browse it below
            self.query_one("#release-tree", ReleaseTree).focus()
            return
        self.action_choose()

    @on(DirectoryTree.DirectorySelected, "#release-tree")
    def _tree_picked(self, event: DirectoryTree.DirectorySelected) -> None:
        box = self.query_one("#release-path", Input)
        box.value = f"{event.path}"
        if (event.path / "release.json").is_file():
            self.query_one("#install", Button).focus()

    @on(Button.Pressed, "#install")
    def action_choose(self) -> None:
        path, text = self.describe(self.query_one("#release-path", Input).value)
        if path is None:
            self.query_one("#error", Static).update(text)
            return
        self.dismiss(path)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
