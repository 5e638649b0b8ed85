"""The dashboard in a real browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from tests.conftest import ServiceThread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless on a machine without a network: no sandbox (root), no background
# connections Chromium would otherwise try and fail at.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def test_the_dashboard_shows_six_tiers_and_finds_a_memory(
    service: ServiceThread, client: httpx.Client, namespace: str, tmp_path: Path
) -> None:
    for text in ["The rocket launched at dawn", "Tomatoes need full sun"]:
        client.post("/v1/memories", json={"namespace": namespace, "text": text})

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page()
        await page.goto(f"{service.url}/dashboard")
        await page.wait_for_function(
            "document.querySelectorAll('#tiers tbody tr').length === 6"
        )
        tiers = await page.locator("#tiers tbody tr td:first-child").all_inner_texts()
        health = await page.locator("#tiers tbody tr td:nth-child(2)").all_inner_texts()

        await page.fill("input[name=namespace]", namespace)
        await page.fill("input[name=query]", "when did the spacecraft take off?")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#results li")
        first = await page.locator("#results li").first.inner_text()
        answer = await page.locator("#answer").inner_text()
        await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        await browser.close()

    assert tiers == ["hbm", "host", "redis", "pgvector", "warehouse", "object"]
    assert health == ["healthy"] * 6
    assert "The rocket launched at dawn" in first
    assert "served by" in answer


async def test_a_refused_search_shows_the_servers_message(
    service: ServiceThread,
) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page()
        await page.goto(f"{service.url}/dashboard")
        await page.fill("input[name=namespace]", "not a namespace!")
        await page.fill("input[name=query]", "anything")
        await page.click("button[type=submit]")
        await page.wait_for_function("document.getElementById('error').textContent")
        error = await page.locator("#error").inner_text()
        await browser.close()

    assert "namespace" in error
