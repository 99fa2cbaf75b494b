"""Rich markup shared by the screens (one place, so the fleet and a device say a status the same way)."""

STATUS_STYLE = {"ok": "[green]ok[/]", "warn": "[yellow bold]WARN[/]", "crit": "[red bold]CRIT[/]",
                "unreachable": "[magenta bold]DOWN[/]", "checking": "[dim]checking…[/]",
                "released": "[dim]RELEASED[/]"}


def tilde(path: object) -> str:
    """A path as a technician reads it in a title bar: under the home directory, ``~/...``."""
    from pathlib import Path

    p = Path(str(path))
    try:
        return "~/" + str(p.relative_to(Path.home()))
    except (ValueError, RuntimeError):
        return str(p)
