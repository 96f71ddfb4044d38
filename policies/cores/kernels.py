"""Optional compiled CPU loops for the gate-grid scans.

``extension()`` returns the compiled module, or None when it is disabled (``URLSTM_NO_EXT=1``) or
could not be built; the Python scans are then used.
"""

from __future__ import annotations


def extension():
    return None
