"""Textual UI for fieldkit: one screen per module, thin drivers of fieldkit core calls."""
