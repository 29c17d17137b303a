"""Query parameters that the read routes and the stream share.

No `from __future__ import annotations`: FastAPI reads these annotations at run time.
"""

from typing import Annotated

from fastapi import Query

from bridge.event import MAX_NAME_LENGTH, NAME_PATTERN

# seq is a 64-bit integer in both stores: a larger cursor is a 422, not a driver overflow.
MAX_SEQ = 2**63 - 1

# A filter that names no possible topic is a 422, before it reaches the store.
Topic = Annotated[str | None, Query(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]
