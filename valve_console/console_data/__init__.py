"""The console's data layer: the event feed, the latest-wins buffer and the farm model.

Plain data and the FarmClient only: no Textual, no screens, no widgets (an import-linter contract in
pyproject.toml), so the widgets and screens both build on it.
"""

from .changes import Changes, Snapshot
from .feed import EventFeed
from .model import FarmModel, outlet_of, placeholder_console, port_sort_key
from .power import (
    PowerHistory,
    farm_watts,
    finite,
    format_joules,
    format_watts,
    format_wh,
    outlet_watts,
    pdu_watts,
)

__all__ = ["Changes", "EventFeed", "FarmModel", "PowerHistory", "Snapshot", "farm_watts", "finite", "format_joules",
           "format_watts", "format_wh", "outlet_of", "outlet_watts", "pdu_watts", "placeholder_console",
           "port_sort_key"]
