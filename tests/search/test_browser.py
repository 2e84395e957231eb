"""The search page (search/web/) in a real headless Chromium driven by Playwright, against the live
server over the embedded synthetic clips: type a query, find the expected clip in the first row,
play it in place, filter, page, follow "more like this" and reload the URL. Needs Debian's
``chromium`` (``.ci/run`` installs it); skipped with a reason where it is absent.
``CLIPVIP_SCREENSHOT=<file.png>`` also saves the screenshot there, and ``CLIPVIP_SEARCH_INDEX=<folder>``
runs the same test on another index (the README's picture is this test on ``clipvip demo``'s index).
Run: ``.venv/bin/python -m pytest tests/search/test_browser.py -q``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def page(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=FLAGS, viewport={"width": 1280, "height": 860})
        try:
            yield context.new_page()
        finally:
            context.close()


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all("#grid .card", """cards => cards.map(c => {
        const r = c.getBoundingClientRect();
        return {key: c.dataset.key, caption: c.dataset.caption, top: Math.round(r.top)};
    })""")


def _wait_for_results(page, previous: str | None = None) -> None:
    page.wait_for_function("prev => { const g = document.getElementById('grid'); "
                           "return g.dataset.ready && g.dataset.ready !== prev; }", arg=previous or "", timeout=30_000)


@pytest.fixture()
def served(request):
    """(server, library searcher) over the test index, or over ``CLIPVIP_SEARCH_INDEX``."""
    from search.query import Searcher
    from tests.search.conftest import LiveServer

    folder = os.environ.get("CLIPVIP_SEARCH_INDEX")
    if not folder:
        demo_index = request.getfixturevalue("demo_index")
        yield request.getfixturevalue("live_server"), Searcher.open([f"demo={demo_index}"], device="cpu")
        return
    server = LiveServer(Searcher.open([f"demo={folder}"], device="cpu"))
    try:
        yield server, Searcher.open([f"demo={folder}"], device="cpu")
    finally:
        server.close()


def test_search_play_filter_page_and_share(page, served, tmp_path):
    live_server, lib = served
    query = "a red circle moving left"
    expected = lib.search("demo", text=query, k=1).hits[0].key
    page.goto(live_server.url + "/")
    page.fill("#q", query)
    page.press("#q", "Enter")
    _wait_for_results(page)
    cards = _cards(page)
    first_row = [c["key"] for c in cards if c["top"] == cards[0]["top"]]
    assert [c["key"] for c in cards] == [h.key for h in lib.search("demo", text=query, k=24).hits]
    assert expected in first_row and len(first_row) > 1
    assert "q=a+red+circle+moving+left" in page.url

    # Click: the clip plays in place and its clock advances.
    page.click(f'#grid .card[data-key="{expected}"] .media')
    page.wait_for_selector(f'#grid .card[data-key="{expected}"] video')
    page.wait_for_function(f"""() => {{ const v = document.querySelector('#grid .card[data-key="{expected}"] video');
                                return v && v.currentTime > 0.3; }}""", timeout=30_000)
    shot = tmp_path / "search_page.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    if os.environ.get("CLIPVIP_SCREENSHOT"):
        shutil.copy(shot, os.environ["CLIPVIP_SCREENSHOT"])

    # A caption filter: the grid shows exactly the best clips whose caption holds the word.
    ready = page.get_attribute("#grid", "data-ready")
    page.fill("#cap", "square")
    page.click("#apply")
    _wait_for_results(page, ready)
    filtered = _cards(page)
    assert filtered and all("square" in c["caption"] for c in filtered)
    assert [c["key"] for c in filtered] != [c["key"] for c in cards]
    assert [c["key"] for c in filtered] == [h.key for h in lib.search("demo", text=query, k=24,
                                                                      filters={"caption": "square"}).hits]

    # The URL reproduces the view in a fresh load.
    url = page.url
    assert "cap=square" in url
    page.goto(url)
    _wait_for_results(page)
    assert [c["key"] for c in _cards(page)] == [c["key"] for c in filtered]

    # Paging: 12 a page, the second page continues the ranking.
    page.click("#clear")
    page.select_option("#per", "12")
    ready = page.get_attribute("#grid", "data-ready")
    page.click("#apply")
    _wait_for_results(page, ready)
    ready = page.get_attribute("#grid", "data-ready")
    page.click("#next")
    _wait_for_results(page, ready)
    assert [c["key"] for c in _cards(page)] == [c["key"] for c in cards[12:24]] and "page=2" in page.url

    # More like this: the clicked clip's neighbours, without itself.
    ready = page.get_attribute("#grid", "data-ready")
    page.click(f'#grid .card[data-key="{cards[12]["key"]}"] button.like')
    _wait_for_results(page, ready)
    assert f"like={cards[12]['key']}" in page.url and cards[12]["key"] not in [c["key"] for c in _cards(page)]
