"""JSON responses serialised by orjson, numpy arrays included, with tier headers."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

from memory_tiers.hierarchy import Trace

SERVED_BY_HEADER = "X-Tiermem-Served-By"
TIMINGS_HEADER = "X-Tiermem-Timings"


class FastJSONResponse(JSONResponse):
    """orjson writes numpy arrays directly, without a Python list in between."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def traced(content: Any, trace: Trace, status_code: int = 200) -> FastJSONResponse:
    """A response that says which tier served its items and what each cost."""
    return FastJSONResponse(
        content, status_code=status_code, headers=trace_headers(trace)
    )


def trace_headers(trace: Trace) -> dict[str, str]:
    return {
        SERVED_BY_HEADER: trace.served_header(),
        TIMINGS_HEADER: trace.timings_header(),
    }
