"""GET /dashboard: one page over the REST API, for people rather than programs.

The page is static; its script reads /v1/tiers every two seconds and sends
searches to /v1/memories/search, so it shows exactly what clients see.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["dashboard"])


@cache
def _page() -> str:
    return resources.files("app").joinpath("static", "dashboard.html").read_text()


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_page())
