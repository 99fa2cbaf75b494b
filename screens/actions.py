"""One registry of actions per screen. Bindings, the `?` help and the command palette all come
from here, so they cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Action:
    id: str
    key: str
    action: str
    description: str
    tooltip: str
    show: bool = True
    priority: bool = False
    key_display: str | None = None


def bindings(actions: list[Action]) -> list[Binding]:
    return [Binding(a.key, a.action, a.description, show=a.show, priority=a.priority, id=a.id,
                    tooltip=a.tooltip, key_display=a.key_display) for a in actions]


APP = [
    Action("app.help", "question_mark", "help", "Help", "Show every key on this screen", key_display="?"),
    Action("app.quit", "q", "quit", "Quit", "Leave fieldkit (simulated devices of the demo stop)"),
]

FLEET = [
    Action("fleet.open", "enter", "open_device", "Open", "Live health of the selected device", priority=True),
    Action("fleet.why", "w", "why", "Why", "The selected device's whole problem: every failing check, "
           "or the full connection error"),
    Action("fleet.refresh", "r", "refresh", "Refresh", "Check every device now", show=False),  # it polls itself
    Action("fleet.filter", "slash", "filter", "Filter", "Show only devices matching text", key_display="/"),
    Action("fleet.add", "a", "add_device", "Add", "Add a device to the inventory"),
    Action("fleet.scan", "s", "scan", "Scan",
           "Find devices on serial ports and by mDNS; Enter on one adds it, prefilled"),
    Action("fleet.remove", "x", "remove_device", "Remove", "Remove the selected device from the inventory",
           show=False),  # rare and not undone by a key: in ? and the palette, not the footer
    Action("fleet.trust", "t", "trust_device", "Trust", "Check and pin the selected device's SSH host key",
           show=False),  # an unknown key asks by itself
    Action("fleet.audit", "A", "audit", "Audit", "The operator journal: entries, verify, export, sync"),
    Action("fleet.checklist", "c", "checklist", "Checklist",
           "Run a checklist on the selected device, or resume its stopped run"),
    Action("fleet.clear_filter", "escape", "clear_filter", "Clear filter", "Show all devices again", show=False),
    Action("fleet.bench", "b", "bench", "Bench", "Benchmark a model on the selected device", show=False),
    Action("fleet.models", "m", "models", "Models",
           "The selected device's installed models: install a release, roll back, verify", show=False),
]

SCAN = [
    Action("scan.back", "escape", "cancel_or_back", "Cancel/Back",
           "Stop the scan (ports close within a second), or go back to the fleet"),
    Action("scan.add", "enter", "add", "Add", "Add the selected device: its target and suggested profile "
           "prefilled", priority=True),
    Action("scan.again", "r", "rescan", "Scan again", "Scan serial ports and mDNS again"),
]

DEVICE = [
    Action("device.back", "escape", "back", "Back", "Stop polling, close the link and return to the fleet"),
    Action("device.detail", "enter", "check_detail", "Detail",
           "The selected check in full: its whole message, the value and the limits", priority=True),
    Action("device.info", "i", "info", "Info", "The device's system, runtime and agent details in full"),
    Action("device.pause", "space", "toggle_pause", "Pause", "Pause or resume live polling"),
    Action("device.refresh", "r", "poll_now", "Refresh", "Poll the device now", show=False),
    Action("device.faster", "plus", "faster", "Faster", "Poll more often", key_display="+", show=False),
    Action("device.slower", "minus", "slower", "Slower", "Poll less often", key_display="-", show=False),
    Action("device.bench", "b", "bench", "Bench", "Benchmark a model on this device"),
    Action("device.models", "m", "models", "Models", "Installed models: install a release, roll back, verify"),
    Action("device.checklist", "c", "checklist", "Checklist",
           "Run a checklist on this device, or resume its stopped run"),
]

BENCH = [
    Action("bench.start", "ctrl+r", "start", "Start", "Start the benchmark with these settings"),
    Action("bench.cancel", "escape", "cancel_or_back", "Cancel/Back",
           "Cancel the running benchmark (the device process is stopped), or go back"),
    Action("bench.compare", "c", "compare", "Compare", "Compare the two picked saved runs side by side"),
]

MODELS = [
    Action("models.back", "escape", "cancel_or_back", "Cancel/Back",
           "Cancel the running install (before activation; the copy resumes next time), or go back"),
    Action("models.install", "i", "install", "Install", "Pick a signed release directory and install it here"),
    Action("models.rollback", "R", "rollback", "Roll back",
           "Make the selected model's previous version active again (asks first, smoke-tested)"),
    Action("models.verify", "v", "verify", "Verify", "Re-hash every installed model file on the device"),
    Action("models.refresh", "r", "refresh", "Refresh", "Read the installed models again"),
]

RELEASE_PICKER = [
    Action("picker.cancel", "escape", "cancel", "Cancel", "Close without installing"),
    Action("picker.install", "ctrl+s", "choose", "Install", "Install the release in the chosen directory"),
]

AUDIT = [
    Action("audit.back", "escape", "cancel_or_back", "Cancel/Back", "Cancel the running export or sync, or go back"),
    Action("audit.detail", "enter", "entry_detail", "Detail", "The selected entry in full: every field and "
           "all its details"),
    Action("audit.verify", "v", "verify", "Verify all", "Check every entry's hash and signature, the checkpoints "
           "and the device journals (on opening, only the entries added since the last verification are checked)"),
    Action("audit.export", "e", "export", "Export", "Write a self-contained verifiable bundle: choose where "
           "(a mounted USB stick is offered first)"),
    Action("audit.sync", "s", "sync", "Sync", "Send pending entries to the receiver URL"),
    Action("audit.reload", "r", "reload_entries", "Reload", "Read the journal again"),
]

CHECKLIST = [
    Action("checklist.back", "escape", "cancel_or_back", "Stop/Back",
           "Stop the run after the current step (it can be resumed), or go back"),
    Action("checklist.start", "enter", "start", "Start", "Run the selected checklist on this device"),
    Action("checklist.yes", "y", "answer_yes", "Yes", "Answer the question yes (with the note, if any)"),
    Action("checklist.no", "n", "answer_no", "No", "Answer the question no (with the note, if any)"),
    Action("checklist.note", "e", "note", "Note", "Type a note for this answer; Enter keeps it"),
    Action("checklist.report", "w", "write_report", "Report",
           "Write the signed report (report.html, report.json) under the home's reports/"),
]

RESUME = [
    Action("resume.resume", "r", "resume", "Resume", "Continue the run at its first unfinished step"),
    Action("resume.new", "s", "new", "Start new", "Leave that run as it is and pick a checklist"),
    Action("resume.cancel", "escape", "cancel", "Cancel", "Go back without running anything"),
]
