"""Checklists: guided procedures on one device (rollback, commissioning, model update) whose every
step is journaled, so a run survives a pulled cable and leaves a signed record (:mod:`fieldkit.report`).

* :mod:`.model` — the TOML format (pydantic; errors name the file, the step and the key), the bundled
  checklists and the home's own;
* :mod:`.steps` — what confirm / check / action / record steps do on the device;
* :mod:`.runner` — running and resuming a run; its state lives in the operator journal.
"""

from fieldkit.checklists.model import (
    Checklist,
    ChecklistError,
    Step,
    get_checklist,
    list_checklists,
    load_checklist_file,
    parse_checklist,
)
from fieldkit.checklists.runner import (
    RUN_ID_PATTERN,
    Answer,
    Run,
    check_run_id,
    list_runs,
    load_run,
    parse_answers,
    resume_run,
    start_run,
)
from fieldkit.checklists.steps import RunInputs

__all__ = [
    "RUN_ID_PATTERN",
    "Answer",
    "Checklist",
    "ChecklistError",
    "Run",
    "RunInputs",
    "Step",
    "check_run_id",
    "get_checklist",
    "list_checklists",
    "list_runs",
    "load_checklist_file",
    "load_run",
    "parse_answers",
    "parse_checklist",
    "resume_run",
    "start_run",
]
