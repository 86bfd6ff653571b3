"""``mlasm serve`` under a class: first-page time, interaction latency and memory per visitor.

For each number of visitors N it starts ``python -m mlasm serve`` on a run (loopback, a free port,
at most N seats), measures the memory of the server alone, opens N Chromium pages at once (each in
a browser context of its own, as N students' computers), then does ``--rounds`` rounds of the
browser test's interactions (an image, a word, a typed query, a region, the Levels tab and back) in
every page at once, and reports:

- first page: seconds from asking for the page until its attention picture shows (median, slowest);
- interaction: seconds from the action until the page's new picture shows (median, 95th percentile);
- memory: proportional set size (PSS: pages shared by several processes, such as the libraries and
  the memory-mapped score matrices, counted once in all) of the server and every kernel; per
  visitor = (everything with N visitors - the server and its warm process alone) / N; and the private
  memory of the visitors' processes (kernels and their stand-ins) / N.

The server is stopped with SIGINT after each N, and every kernel checked gone.

    python benchmarks/serve_visitors.py --visitors 1,3                   # the tiny run, built in seconds
    python benchmarks/serve_visitors.py --run runs/demo --visitors 10,30  # the demo's run (the issue's goals)
    python benchmarks/serve_visitors.py --server-only --visitors 10,30    # no browser: the server's share

Needs the [serve] and [dev] extras and Debian's chromium (scripts/install_browser.sh).
"""
from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(Path(__file__).resolve().parent)]

from classroom_browser import ACTIONS, Class, chromium, memory_kib  # noqa: E402  tests/, for the same pages
from serve_support import alive, served, tiny_run  # noqa: E402
from table import print_markdown_table  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def measure(tmp: Path, run: Path, data: str, visitors: int, rounds: int, timeout: float) -> dict:
    with served(tmp, run, Path(data) if data != "shapescenes" else data, "--max-visitors", str(visitors)) as server, \
            chromium(tmp, timeout=timeout) as browser:
        time.sleep(2)
        alone = memory_kib([server.process.pid, *server.processes()])  # the server and its warm process
        group = Class(browser, visitors, timeout)
        loaded = list(group.open(server.url + "voila/render/workbench.ipynb").values())
        latencies = []
        for round_ in range(rounds):
            for what, action, selector in ACTIONS:
                latencies += list(group.act(what, action, selector, round_ * len(ACTIONS)).values())
        kernels = server.kernels()
        everything = memory_kib([server.process.pid, *server.processes()])
        visitors_own = memory_kib(server.visitor_processes())  # forked kernels and their stand-ins
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=120)
        left = [pid for pid in server.kernels_seen if alive(pid)]
    mib = 1 / 1024
    return {"visitors": visitors, "kernels": len(kernels),
            "first page median s": f"{statistics.median(loaded):.1f}", "first page slowest s": f"{max(loaded):.1f}",
            "interactions": len(latencies), "interaction median s": f"{statistics.median(latencies):.2f}",
            "interaction p95 s": f"{percentile(latencies, 0.95):.2f}",
            "server alone MiB (PSS)": f"{alone['pss'] * mib:.0f}",
            "per visitor MiB (PSS)": f"{(everything['pss'] - alone['pss']) * mib / visitors:.0f}",
            "private per visitor MiB": f"{visitors_own['private'] * mib / visitors:.0f}",
            "all MiB (PSS)": f"{everything['pss'] * mib:.0f}", "kernels left after Ctrl-C": len(left)}


def stop_on_sigterm(*_) -> None:
    raise KeyboardInterrupt


def measure_server_side(tmp: Path, run: Path, data: str, visitors: int, rounds: int) -> dict:
    """No browser: N pages asked for at once (urllib), then in each kernel ``rounds`` image changes at once,
    sent over its websocket as a page's control would send them, timed until the kernel is idle again."""
    import asyncio
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from serve_support import KernelSocket

    def first_page(url: str) -> tuple[float, str]:
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=600) as response:
            return time.monotonic() - started, json.loads(response.read().decode().split('"kernelId": ', 1)[1]
                                                          .split(",", 1)[0])

    async def visitor(index: int, kernel: str, url: str, times: list[float]) -> None:
        socket = await KernelSocket.connect(url, kernel)
        states, _ = await socket.widget_states()
        image_box = next(model for model, state in states.items()
                         if state["state"].get("_model_name") == "BoundedIntTextModel"
                         and state["state"].get("description") == "image")
        for round_ in range(rounds):
            times.append(await socket.set_widget(image_box, {"value": 1 + (index + 7 * round_) % 90}))
        socket.close()

    async def everyone(kernels: list[str], url: str) -> list[float]:
        times: list[float] = []
        await asyncio.gather(*[visitor(i, kernel, url, times) for i, kernel in enumerate(kernels)])
        return times

    with served(tmp, run, data, "--max-visitors", str(visitors)) as server:
        time.sleep(2)
        alone = memory_kib([server.process.pid, *server.processes()])
        with ThreadPoolExecutor(visitors) as pool:
            pages = list(pool.map(first_page, [server.url + "voila/render/workbench.ipynb"] * visitors))
        latencies = asyncio.run(everyone([kernel for _, kernel in pages], server.url))
        everything = memory_kib([server.process.pid, *server.processes()])
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=120)
        left = [pid for pid in server.kernels_seen if alive(pid)]
    loaded = [seconds for seconds, _ in pages]
    return {"visitors": visitors, "first page median s": f"{statistics.median(loaded):.1f}",
            "first page slowest s": f"{max(loaded):.1f}", "image changes": len(latencies),
            "change median s": f"{statistics.median(latencies):.2f}", "change p95 s": f"{percentile(latencies, 0.95):.2f}",
            "server alone MiB (PSS)": f"{alone['pss'] / 1024:.0f}",
            "per visitor MiB (PSS)": f"{(everything['pss'] - alone['pss']) / 1024 / visitors:.0f}",
            "kernels left after Ctrl-C": len(left)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", default="1,3", help="comma-separated numbers of visitors (default 1,3)")
    parser.add_argument("--run", default=None, help="a run folder (default: the tiny run of the tests, built now)")
    parser.add_argument("--data", default="shapescenes", help="the run's data (default shapescenes)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the six interactions (default 2)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds any one wait may take (default 300)")
    parser.add_argument("--server-only", action="store_true",
                        help="no browser: pages asked for with urllib and image changes sent over each kernel's "
                             "websocket, timed until the kernel is idle (the server's share of the latency)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # a killed benchmark still stops its server and kernels
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlasm-serve-bench-") as folder:
        tmp = Path(folder)
        run, data = (Path(args.run), args.data) if args.run else tiny_run(tmp / "tiny")
        for count in (int(n) for n in args.visitors.split(",")):
            here = tmp / f"n{count}"
            here.mkdir()
            if args.server_only:
                rows.append(measure_server_side(here, run.resolve(), str(data), count, 5 * args.rounds))
            else:
                rows.append(measure(here, run.resolve(), str(data), count, args.rounds, args.timeout))
            print(rows[-1], flush=True)
    print_markdown_table(rows)


if __name__ == "__main__":
    main()
