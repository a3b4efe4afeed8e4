"""SNMP PDUs: the shared client, config model and base driver, plus ``snmp``.

v1/v2c GET and SET go through the built-in codec of :mod:`.ber` (one UDP endpoint per driver
and event loop) unless the config says ``engine: pysnmp``; SNMPv3 and column walks use pysnmp 7.

Each vendor driver is a table on :class:`SnmpPDU`: the column of outlet names, the column of outlet
states and how its values read, and the command written for ON, OFF and REBOOT. OIDs are numeric
and sent with ``lookupMib=False``, so no MIB files are needed. A port id is the outlet's SNMP index
("1".."N"); vendor tables indexed by unit (Raritan, Eaton, Server Technology) take the unit from
the config and keep the port id the outlet number.

One ``SnmpEngine`` serves every SNMP PDU of an event loop (an engine is bound to the loop that
first used it). It is closed when the last SNMP driver of that loop is closed, or by
:func:`close_engines`.

Vendor tables that meter power derive from ``MeteredSnmpPDU`` and say which columns in a ``Metering``
(``metering``: read_power in var-bind batches).

The package: ``driver`` (SnmpPDU, GenericSnmpPDU, same_column), ``metering`` (MeteredSnmpPDU, Metering, Meter),
``client`` (SnmpClient), ``config`` (SnmpConfig), ``engine`` (pysnmp's engine per loop), ``ber`` (the BER codec)
and ``transport`` (its UDP endpoint); this face
re-exports what the PDU families and the backend use.
"""

from __future__ import annotations

from . import ber, transport
from .client import SnmpClient, SnmpStatusError
from .config import SnmpConfig, normalize_oid, split_host
from .driver import STATE_NAMES, GenericSnmpConfig, GenericSnmpPDU, SnmpPDU, as_int, same_column
from .engine import close_engines
from .metering import Meter, MeteredGenericSnmpPDU, MeteredSnmpPDU, Metering

__all__ = [
    "GenericSnmpConfig",
    "GenericSnmpPDU",
    "Meter",
    "MeteredGenericSnmpPDU",
    "MeteredSnmpPDU",
    "Metering",
    "STATE_NAMES",
    "SnmpClient",
    "SnmpConfig",
    "SnmpPDU",
    "SnmpStatusError",
    "as_int",
    "ber",
    "close_engines",
    "normalize_oid",
    "same_column",
    "split_host",
    "transport",
]
