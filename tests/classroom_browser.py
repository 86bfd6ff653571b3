"""Many visitors on one ``mlasm serve``, in headless Chromium: tests/test_serve_browser.py and
benchmarks/serve_visitors.py drive the class through these.

Each visitor is a browser context of its own (its own cookies, as another student's computer)
with one page on the workbench. ``Class.open`` loads every page at once and times each until its
attention picture shows; ``Class.act`` does one interaction in every page at once (a word, an image,
a typed query, a tab) and times each page until its picture changed, polling all pages together
so that one slow page does not inflate the others' times. Every wait has a timeout.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from browser_support import CHROMIUM, CHROMIUM_ARGS, isolated_env
from test_browser import picture_source

EXPLORER = ".mlasm-attentionexplorer"
PICTURE = f"{EXPLORER} .mlasm-picture img"
LEVELS_PICTURE = ".mlasm-levelpanel .mlasm-picture img"
TYPED_QUERIES = ("a red circle", "a small blue square", "two green triangles", "a large star", "a yellow diamond")

# true when the picture at the selector is loaded, visible and (unless old is "") another than old
_READY = """([sel, old]) => { const e = document.querySelector(sel);
    return !!e && !!e.src && e.src !== old && e.complete && e.naturalWidth > 0
        && e.getBoundingClientRect().width > 0 && e.offsetParent !== null; }"""


@dataclass
class Visitor:
    index: int
    context: object
    page: object
    seen: list[dict] = field(default_factory=list)  # per interaction: what, seconds, picture source

    def other_option(self, nth: int) -> None:
        menu = self.page.locator(f"{EXPLORER} .widget-dropdown select").nth(nth)
        options = menu.locator("option").count()
        current = menu.evaluate("e => e.selectedIndex")
        step = 1 + self.index % max(1, options - 1)  # each visitor its own step, never back to where it is
        menu.select_option(index=(current + step) % options)

    def type_into(self, selector: str, value: str) -> None:
        box = self.page.locator(selector)
        box.fill(value)
        box.press("Enter")

    def tab(self, title: str) -> None:
        self.page.locator(".lm-TabBar-tab, .p-TabBar-tab", has_text=title).first.click()


# (what, action on a visitor at round n, the picture it redraws); each visitor picks its own values
ACTIONS: tuple[tuple[str, Callable[[Visitor, int], None], str], ...] = (
    ("image", lambda v, n: v.type_into(".mlasm-image-box input", str(1 + (v.index + 3 * n) % 15)), PICTURE),
    ("word", lambda v, n: v.other_option(0), PICTURE),
    ("typed query", lambda v, n: v.type_into(".mlasm-text-box input",
                                             TYPED_QUERIES[(v.index + n) % len(TYPED_QUERIES)]), PICTURE),
    ("region", lambda v, n: v.other_option(1), PICTURE),
    ("Levels tab", lambda v, n: v.tab("Levels"), LEVELS_PICTURE),
    ("Attention tab", lambda v, n: v.tab("Attention"), PICTURE),
)


class Class:
    """``count`` visitors in one headless Chromium, each in a context of their own."""

    def __init__(self, browser, count: int, timeout: float):
        self.timeout = timeout
        self.visitors = []
        for index in range(count):
            context = browser.new_context(viewport={"width": 1280, "height": 1400})
            context.set_default_timeout(timeout * 1000)
            self.visitors.append(Visitor(index, context, context.new_page()))

    def _wait_all(self, started: dict[int, float], selector: dict[int, str], old: dict[int, str],
                  every: float = 0.05) -> dict[int, float]:
        """Seconds from ``started`` until each visitor's picture is ready (polled together, ``every`` s)."""
        done: dict[int, float] = {}
        deadline = time.monotonic() + self.timeout
        while len(done) < len(started):
            for visitor in self.visitors:
                if visitor.index in started and visitor.index not in done and \
                        visitor.page.evaluate(_READY, [selector[visitor.index], old[visitor.index]]):
                    done[visitor.index] = time.monotonic() - started[visitor.index]
            if time.monotonic() > deadline:
                late = sorted(set(started) - set(done))
                raise TimeoutError(f"visitors {late}: no new picture within {self.timeout:.0f} s")
            time.sleep(every)
        return done

    def open(self, url: str) -> dict[int, float]:
        """Every visitor opens ``url`` at once; seconds until each one's attention picture shows."""
        started = {}
        for visitor in self.visitors:
            started[visitor.index] = time.monotonic()
            visitor.page.goto(url, wait_until="commit")
        # polled once a second: asking ten loading pages twenty times a second kept most of them from
        # ever showing on 2 cores (seen with 10 visitors)
        return self._wait_all(started, {v.index: PICTURE for v in self.visitors}, {v.index: "" for v in self.visitors},
                              every=1.0)

    def act(self, what: str, action: Callable[[Visitor, int], None], selector: str, round_: int) -> dict[int, float]:
        """One interaction in every page at once; seconds until each page's picture changed."""
        old = {v.index: ("" if what.endswith("tab") else picture_source(v.page, selector)) for v in self.visitors}
        started = {}
        for visitor in self.visitors:
            started[visitor.index] = time.monotonic()
            action(visitor, round_)
        seconds = self._wait_all(started, {v.index: selector for v in self.visitors}, old)
        for visitor in self.visitors:
            visitor.seen.append({"what": what, "seconds": seconds[visitor.index],
                                 "source": picture_source(visitor.page, selector)})
        return seconds


@contextmanager
def chromium(tmp: Path, timeout: float = 60) -> Iterator[object]:
    """Debian's Chromium, headless and offline (browser_support's flags), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                             env=isolated_env(tmp), timeout=timeout * 1000)
        try:
            yield browser
        finally:
            browser.close()


def memory_kib(pids) -> dict[str, int]:
    """Proportional (PSS: shared pages split among their users) and private memory of processes, in KiB."""
    total = {"pss": 0, "private": 0}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if name == "Pss":
                total["pss"] += int(rest.split()[0])
            elif name in ("Private_Clean", "Private_Dirty"):
                total["private"] += int(rest.split()[0])
    return total
