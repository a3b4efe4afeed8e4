"""Reusable widgets of the operator console (console view, outlet grid, state badges, log view)."""
