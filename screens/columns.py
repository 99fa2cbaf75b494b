"""Columns that give way by importance: one table for every screen that lists things.

A screen describes its columns once (:class:`Col`): how important each one is, how narrow it may get,
and which one carries the reason (``flex``: it takes the room the more important columns leave and is
cut at a word boundary). :class:`FitTable` keeps the whole text of every cell, shows each column at
the width :func:`fit_widths` gives it for the table's width (again on every resize and when a cell
grows), drops the least important columns first on a narrow terminal, and hands the whole row to a
detail view (:meth:`FitTable.row_fields`, shown by ``screens.modals.DetailModal``).

Rules :func:`fit_widths` keeps, in order of importance (``rank``, then the screen's column order):
a column is shown at its natural width (its longest cell, capped by ``max_width``) when that fits; else
squeezed to ``min_width`` (a ``flex`` column takes everything left); else it and every less important
column are left out. Rank 0 columns are always shown. Room left over goes back to squeezed columns.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from rich.errors import MarkupError
from rich.text import Text
from textual import events
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

ELLIPSIS = "…"


@dataclass(frozen=True)
class Col:
    """One column of a :class:`FitTable`."""

    key: str
    label: str
    rank: int = 5
    """Importance: 0 is always shown; a higher rank gives way first (squeezed, then left out)."""
    min_width: int | None = None
    """The narrowest it may be squeezed to before it is left out; None: never squeezed, only left out."""
    max_width: int | None = None
    """The widest it grows to (None: as wide as its longest cell)."""
    flex: bool = False
    """The reason column: takes the room that is left and is cut at a word boundary, never mid-word."""


def fit_widths(columns: Sequence[Col], natural: Mapping[str, int], available: int,
               padding: int = 1) -> dict[str, int]:
    """Width of each shown column (the ones left out are absent) for a table ``available`` cells wide;
    ``natural``: each column's widest cell or label; ``padding``: cells of padding on each side."""
    pad = 2 * padding
    order = sorted(columns, key=lambda c: c.rank)  # stable: the screen's order within a rank
    want = {c.key: _want(c, natural.get(c.key, len(c.label))) for c in columns}
    least = {c.key: want[c.key] if c.min_width is None else min(want[c.key], c.min_width) for c in columns}
    widths: dict[str, int] = {}
    room = available
    essentials = sum(least[c.key] + pad for c in order if c.rank == 0)  # kept for the rank 0 still to come
    for c in order:
        if c.rank == 0:
            essentials -= least[c.key] + pad
        free = room - essentials
        if want[c.key] + pad <= free:
            widths[c.key] = want[c.key]
        elif least[c.key] + pad <= free:
            widths[c.key] = free - pad if c.flex else least[c.key]
        elif c.rank == 0:
            widths[c.key] = least[c.key]  # the essentials stay even when nothing fits (the table scrolls)
        else:
            break
        room -= widths[c.key] + pad
    for c in order:  # what is left goes back to the squeezed ones, most important first
        if c.key in widths and room > 0:
            grow = min(room, want[c.key] - widths[c.key])
            if grow > 0:
                widths[c.key] += grow
                room -= grow
    return widths


def _want(col: Col, natural: int) -> int:
    width = max(natural, len(col.label))
    return min(width, col.max_width) if col.max_width else width


def as_text(value: Any) -> Text:
    """A cell's value as rich Text: strings are markup (as DataTable reads them), bad markup stays literal."""
    if isinstance(value, Text):
        return value
    if isinstance(value, str):
        try:
            return Text.from_markup(value)
        except MarkupError:
            return Text(value)
    return Text("" if value is None else str(value))


def plain(value: Any) -> str:
    """The text of a cell without its markup (for a detail view, a clipboard, a test)."""
    return as_text(value).plain


def first_line(text: Text) -> Text:
    return text.split("\n")[0] if "\n" in text.plain else text


def cut_words(text: Text, width: int) -> Text:
    """``text`` in at most ``width`` cells: whole words and an ellipsis (a word longer than half the
    width is cut inside, so a long path still shows its start)."""
    if text.cell_len <= width:
        return text
    if width <= 1:
        return Text(ELLIPSIS[:width])
    limit = width - 1
    cut = text.plain.rfind(" ", 0, limit + 1)
    if cut < limit // 2:
        cut = limit
    out = text[:cut]
    out.rstrip()
    while out.cell_len > limit:  # wide characters
        out = out[:-1]
    out.append(ELLIPSIS)
    return out


def cut_end(text: Text, width: int) -> Text:
    if text.cell_len <= width:
        return text
    out = text.copy()
    out.truncate(width, overflow="ellipsis")
    return out


def natural_width(value: Any) -> int:
    return first_line(as_text(value)).cell_len


class FitTable(DataTable):
    """A DataTable whose columns give way by importance (see the module doc).

    Use it as a DataTable with row keys: ``add_row`` takes one cell per :class:`Col` (also for
    columns not shown now); ``update_cell``, ``get_cell`` and :meth:`full_row` write and read the whole
    values, whatever is shown."""

    def __init__(self, columns: Sequence[Col], **kw: Any) -> None:
        super().__init__(**kw)
        self.specs = list(columns)
        self._by_key = {c.key: c for c in self.specs}
        self._full: dict[str, dict[str, Any]] = {}  # row key -> column key -> whole value, in row order
        self._widths: dict[str, int] | None = None  # None until the first fit: every column at its content
        self._refit_pending = False
        self._keys = itertools.count(1)

    # ---- what is shown ------------------------------------------------------------------------------
    @property
    def shown(self) -> list[str]:
        """Keys of the columns on screen now, in the screen's order."""
        return [str(k.value) for k in self.columns]

    def natural(self) -> dict[str, int]:
        widths = {c.key: len(c.label) for c in self.specs}
        for cells in self._full.values():
            for key, value in cells.items():
                widths[key] = max(widths[key], natural_width(value))
        return widths

    def available_width(self) -> int:
        """The table's width less a vertical scrollbar's (kept free, so rows that arrive later never
        push a horizontal scrollbar in)."""
        return max(0, self.size.width - self.styles.scrollbar_size_vertical)

    def display(self, key: str, value: Any) -> Text:
        text = first_line(as_text(value))
        width = None if self._widths is None else self._widths.get(key)
        if width is None:
            return text
        return cut_words(text, width) if self._by_key[key].flex else cut_end(text, width)

    def _ensure_columns(self) -> None:
        if not self.columns:
            for c in self.specs:
                if self._widths is None or c.key in self._widths:
                    super().add_column(c.label, key=c.key, width=None if self._widths is None else self._widths[c.key])

    def refit(self) -> None:
        """Give the columns their widths for the table's current width (resize, new content)."""
        self._refit_pending = False
        available = self.available_width()
        if available <= 0 or not self.is_mounted:
            return
        widths = fit_widths(self.specs, self.natural(), available, self.cell_padding)
        if widths == self._widths:
            return
        shown = [c.key for c in self.specs if c.key in widths]
        self._widths = widths
        if shown != self.shown or not self._full:
            self._rebuild()
            return
        for key in shown:  # the same columns, other widths: set them in place
            column = self.columns[ColumnKey(key)]
            column.width, column.auto_width = widths[key], False
            for row_key, cells in self._full.items():
                super().update_cell(row_key, key, self.display(key, cells.get(key)))
        first_row = next(iter(self._full))
        # update_width makes the table measure itself again (its virtual width follows the columns)
        super().update_cell(first_row, shown[0], self.display(shown[0], self._full[first_row].get(shown[0])),
                            update_width=True)

    def _rebuild(self) -> None:
        """Another set of columns: lay the table out again (on a resize, never on a value tick)."""
        cursor = self.cursor_row
        scroll = self.scroll_offset
        super().clear(columns=True)
        self._ensure_columns()
        keys = self.shown
        for row_key, cells in self._full.items():
            super().add_row(*(self.display(k, cells.get(k)) for k in keys), key=row_key)
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1), animate=False, scroll=False)
            self.scroll_to(scroll.x, scroll.y, animate=False)

    def schedule_refit(self) -> None:
        if not self._refit_pending and self.is_mounted:
            self._refit_pending = True
            self.call_later(self.refit)

    def on_resize(self, event: events.Resize) -> None:
        self.refit()  # (DataTable's own resize handler runs too: Textual calls each class's)

    # ---- the DataTable calls screens use, on whole values ------------------------------------------
    def add_row(self, *cells: Any, height: int | None = 1, key: str | None = None,
                label: Any = None) -> RowKey:
        if len(cells) != len(self.specs):
            raise ValueError(f"{len(cells)} cells for {len(self.specs)} columns")
        row_key = key if key is not None else f"row-{next(self._keys)}"
        self._ensure_columns()
        full = {c.key: v for c, v in zip(self.specs, cells)}
        shown = self.shown
        result = super().add_row(*(self.display(k, full[k]) for k in shown), height=height, key=row_key, label=label)
        self._full[row_key] = full
        self.schedule_refit()
        return result

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Any, *,
                    update_width: bool = False) -> None:
        rk, ck = _key(row_key), _key(column_key)
        if rk not in self._full or ck not in self._by_key:
            super().update_cell(row_key, column_key, value)  # raises CellDoesNotExist as a DataTable does
            return
        self._full[rk][ck] = value
        if ck in self.shown:
            super().update_cell(rk, ck, self.display(ck, value))
        self.schedule_refit()

    def get_cell(self, row_key: RowKey | str, column_key: ColumnKey | str) -> Any:
        rk, ck = _key(row_key), _key(column_key)
        if rk in self._full and ck in self._by_key:
            return self._full[rk][ck]
        return super().get_cell(row_key, column_key)

    # (get_row / get_row_at stay DataTable's: it renders rows through them, shown cells only)
    def full_row(self, row_key: RowKey | str) -> list[Any]:
        """Every cell of the row, whole, one per :class:`Col` (shown or not)."""
        cells = self._full[_key(row_key)]
        return [cells[c.key] for c in self.specs]

    def remove_row(self, row_key: RowKey | str) -> None:
        super().remove_row(row_key)
        self._full.pop(_key(row_key), None)
        self.schedule_refit()

    def clear(self, columns: bool = False) -> "FitTable":
        super().clear(columns=columns)
        self._full.clear()
        if columns:
            self._widths = None
        self.schedule_refit()
        return self

    # ---- detail -------------------------------------------------------------------------------------
    def selected_key(self) -> str | None:
        """The row key under the cursor (None for an empty table)."""
        if self.row_count == 0:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def row_fields(self, row_key: RowKey | str) -> list[tuple[str, str]]:
        """(label, whole text) of every column of the row, shown or not: a detail view's fields."""
        cells = self._full[_key(row_key)]
        return [(c.label, plain(cells.get(c.key))) for c in self.specs]


def _key(key: Any) -> str:
    return str(key.value) if hasattr(key, "value") else str(key)

