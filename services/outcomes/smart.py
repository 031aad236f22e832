"""SMART App Launch scopes (v2 ``system/Observation.cruds``, v1 ``user/*.read``).

A scope is ``context/ResourceType.permissions``; context is ``patient``, ``user`` or
``system``; the type may be ``*``; v2 permissions are letters of ``cruds`` (create,
read, update, delete, search), v1 ones ``read``, ``write`` or ``*``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


def permits(scopes: Iterable[str], resource_type: str, permission: str) -> bool:
    """Whether any scope grants ``permission`` (one of c, r, u, d, s) on the type."""
    for scope in scopes:
        match = _SCOPE.match(scope)
        if not match:
            continue
        _context, scoped_type, perms = match.group(1), match.group(2), match.group(3)
        if scoped_type not in ("*", resource_type):
            continue
        letters = _V1.get(perms, perms)
        if set(letters) <= set("cruds") and permission in letters:
            return True
    return False
