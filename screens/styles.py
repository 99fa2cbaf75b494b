"""Rich markup shared by the screens (one place, so the fleet and a device say a status the same way)."""

STATUS_STYLE = {"ok": "[green]ok[/]", "warn": "[yellow bold]WARN[/]", "crit": "[red bold]CRIT[/]",
                "unreachable": "[magenta bold]DOWN[/]", "checking": "[dim]checking…[/]"}
