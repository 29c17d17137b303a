"""Query parameters that the read routes and the stream share.

No `from __future__ import annotations`: FastAPI reads these annotations at run time.
"""

# seq is a 64-bit integer in both stores: a larger cursor is a 422, not a driver overflow.
from bridge.query.cursor import MAX_SEQ

__all__ = ["MAX_SEQ"]
