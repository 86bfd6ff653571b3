"""``mlasm serve`` in a real browser, under load: several visitors at once on the tiny run.

VISITORS pages (5, or fewer with ``MLASM_SERVE_VISITORS``; 5 took 73 s on the 2 shared development
cores, all 5 first pages shown within 16 s) open the workbench at once, each in a browser context of
its own, and interact in every page at once: an image, a word, a typed query, a region, the Levels tab and
back. Each page's picture must follow its own selection (the visitors chose different images, so
their pictures differ, and one visitor's choices never change another's picture) and never be
blank. Loopback only, bounded in count and time; timing goals are the benchmark's
(benchmarks/serve_visitors.py), not this test's.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from browser_support import assert_not_blank
from serve_support import served, tiny_run
from test_browser import require_browser, shots_folder

VISITORS = min(5, int(os.environ.get("MLASM_SERVE_VISITORS", "5")))
TIMEOUT_S = 240  # for any one wait: every page loading at once on 2 busy cores


@pytest.mark.browser
@pytest.mark.slow
def test_each_visitor_sees_their_own_selection_and_no_blank_picture(short_tmp: Path) -> None:
    require_browser()
    pytest.importorskip("voila", reason="mlasm serve needs the [serve] extra (pip install -e '.[serve]')")
    from classroom_browser import ACTIONS, PICTURE, Class, chromium

    shots = shots_folder(f"serve-{VISITORS}-visitors")
    run, data = tiny_run(short_tmp)
    # one seat more than the visitors: the teaching page's; one visitor more is told the class is full
    with served(short_tmp, run, data, "--max-visitors", str(VISITORS + 1)) as server, \
            chromium(short_tmp, timeout=TIMEOUT_S) as browser:
        visitors = Class(browser, VISITORS, TIMEOUT_S)
        loaded = visitors.open(server.url + "voila/render/workbench.ipynb")
        print(f"{VISITORS} visitors: pages shown after {sorted(round(s, 1) for s in loaded.values())} s")
        assert len(server.kernels()) == VISITORS
        for page in visitors.visitors:
            text = page.page.inner_text("body")
            assert "student_workbench" not in text and "import" not in text, "code is shown"
            assert page.page.locator(".cm-editor, .CodeMirror, .jp-InputPrompt").count() == 0, "an editor is shown"
            assert "Traceback" not in text and "That did not work" not in text

        for round_, (what, action, selector) in enumerate(ACTIONS):
            before = {v.index: v.seen[-1]["source"] if v.seen else None for v in visitors.visitors}
            seconds = visitors.act(what, action, selector, round_)
            print(f"{what}: {sorted(round(s, 2) for s in seconds.values())} s")
            for visitor in visitors.visitors:
                shot = shots / f"visitor{visitor.index}-{round_}-{what.replace(' ', '-')}.png"
                visitor.page.locator(selector).first.screenshot(path=str(shot))
                assert_not_blank(shot)
                if what == "image":  # each chose another image: every picture differs from the others
                    sources = [v.seen[-1]["source"] for v in visitors.visitors]
                    assert len(set(sources)) == VISITORS, "two visitors who chose different images see one picture"
                if not what.endswith("tab") and before[visitor.index] is not None:
                    assert visitor.seen[-1]["source"] != before[visitor.index]

        # one visitor acts alone: nobody else's picture changes
        sources = {v.index: v.page.evaluate(f"() => document.querySelector('{PICTURE}').src") for v in visitors.visitors}
        lone = visitors.visitors[0]
        lone.type_into(".mlasm-image-box input", "14")
        lone.page.wait_for_function(f"old => document.querySelector('{PICTURE}').src !== old",
                                    arg=sources[0], timeout=TIMEOUT_S * 1000)
        lone.page.wait_for_timeout(1000)  # time for any wrongly shared change to show elsewhere
        for visitor in visitors.visitors[1:]:
            now = visitor.page.evaluate(f"() => document.querySelector('{PICTURE}').src")
            assert now == sources[visitor.index], f"visitor {visitor.index}'s picture changed with visitor 0's choice"
        visitors.visitors[0].page.screenshot(path=str(shots / "workbench-page.png"), full_page=False)

        # the teaching page answers a task; then the class is full, and the next visitor is told so
        teaching = browser.new_context(viewport={"width": 1280, "height": 1400}).new_page()
        teaching.set_default_timeout(TIMEOUT_S * 1000)
        teaching.goto(server.url + "voila/render/teaching.ipynb")
        first_task = teaching.locator(".mlasm-task").first
        first_task.locator("button", has_text="Check").click()
        answer = first_task.locator(".mlasm-answer")
        answer.wait_for(state="visible")
        assert answer.inner_text().startswith(("Found one: for caption 0", "Not this one: for caption 0"))
        teaching.screenshot(path=str(shots / "teaching-page.png"), full_page=True)
        late = browser.new_context().new_page()
        response = late.goto(server.url + "voila/render/workbench.ipynb", timeout=60_000)
        assert response.status == 503 and "The class is full" in late.inner_text("body")
