"""The console's data layer: the event feed, the latest-wins buffer and the farm model.

Plain data and the FarmClient only: no Textual, no screens, no widgets (an import-linter contract in
pyproject.toml), so the widgets and screens both build on it.
"""

from .changes import Changes, Snapshot
from .feed import EventFeed
from .model import FarmModel, outlet_of, placeholder_console, port_sort_key

__all__ = ["Changes", "EventFeed", "FarmModel", "Snapshot", "outlet_of", "placeholder_console", "port_sort_key"]
