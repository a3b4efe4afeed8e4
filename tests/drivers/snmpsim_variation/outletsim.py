"""snmpsim variation module: PDU outlets whose control and status columns share one state.

A record's value names the device family and the column's role, e.g.
``1.3.6.1.4.1.13742.6.4.1.2.1.2.1.3|2:outletsim|raritan:ctl``. The outlet is the last OID
component. Module globals are shared by every record, so a write to a control column changes
what the status column of the same family and outlet reads. Outlets start OFF.
"""

from pysnmp.proto import rfc1902
from pysnmp.smi import error

ON, OFF, CYCLE = True, False, None

# family -> role -> (values a write accepts -> new state, or None for read-only; how a read answers)
FAMILIES = {
    "raritan": {  # switchingOperation off 0, on 1, cycle 2; outletSwitchingState on 7, off 8
        "ctl": ({0: OFF, 1: ON, 2: CYCLE}, lambda on: 1 if on else 0),
        "state": (None, lambda on: 7 if on else 8),
    },
    "eaton": {  # write a delay (0 = now, -1 = cancel) to the off/on/reboot command; status off 0, on 1
        "off": ("off", lambda on: -1),
        "on": ("on", lambda on: -1),
        "reboot": ("reboot", lambda on: -1),
        "state": (None, lambda on: 1 if on else 0),
    },
    "cpcard": {  # RMCARD205: control on 2, off 3, reboot 4; status on 1, off 2
        "ctl": ({2: ON, 3: OFF, 4: CYCLE}, lambda on: 1),
        "state": (None, lambda on: 1 if on else 2),
    },
    "sentry": {  # outletControlAction none 0, on 1, off 2, reboot 3; outletStatus off 0, on 1
        "ctl": ({1: ON, 2: OFF, 3: CYCLE}, lambda on: 0),
        "state": (None, lambda on: 1 if on else 0),
    },
}
STATE: dict[tuple[str, int], bool] = {}


def init(**context):
    STATE.clear()


def _refuse(kind, oid, context):
    raise kind(name=oid, idx=max(0, context["varsTotal"] - context["varsRemaining"] - 1))


def variate(oid, tag, value, **context):
    if not context["nextFlag"] and not context["exactMatch"]:
        return context["origOid"], tag, context["errorStatus"]
    family, _, role = str(value).partition(":")
    writes, read = FAMILIES[family][role]
    key = (family, int(oid[-1]))
    if context["setFlag"]:
        if writes is None:
            _refuse(error.NotWritableError, oid, context)
        number = int(context["origValue"])
        if isinstance(writes, str):  # eaton: the column is the action, the value a delay
            if number < -1:
                _refuse(error.WrongValueError, oid, context)
            if number >= 0:
                STATE[key] = writes != "off"
        else:
            if number not in writes:
                _refuse(error.WrongValueError, oid, context)
            STATE[key] = True if writes[number] is None else writes[number]
    return oid, tag, rfc1902.Integer32(read(STATE.get(key, False)))


def shutdown(**context):
    pass
