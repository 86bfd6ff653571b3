"""Helpers for driving a live JupyterLab in headless Chromium (see tests/test_browser.py).

The pieces compose as::

    with lab_server(tmp, root_dir, env={"MLASM_FAST": "1"}) as lab, chromium_page(tmp) as page:
        open_notebook(page, lab, "notebooks/x.ipynb")
        run_all_cells(page, "notebooks/x.ipynb")
        wait_visible(page, [".widget-output img"])
        assert_not_blank(screenshot(page, ".widget-vbox", tmp / "shot.png"))

Everything the server and browser write stays under ``tmp``, and both are always shut
down, with a timeout on every wait. The "pitfalls" cited below are those of the
browser-testing notes (shared/docs/browser-testing-notes.md beside the checkout).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/lib/chromium/chromium")
# Pitfall 2: the real binary, not the /usr/bin/chromium wrapper, with quiet offline flags.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Pitfall 5: the "Jupyter news" pop-up would cover screenshots.
DISABLED_LAB_PLUGINS = ["@jupyterlab/apputils-extension:announcements"]


def browser_missing() -> str | None:
    """Why the browser stack cannot run here, or None when it can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (run scripts/install_browser.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[dev]')"
    return None


# --------------------------------------------------------------------------- server


@dataclass
class LabServer:
    """A running JupyterLab: where it listens and where its log goes."""

    url: str
    token: str
    root_dir: Path
    runtime_dir: Path
    log_path: Path

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 10) -> dict:
        """Call the REST API with the token (token-authenticated calls skip the XSRF check)."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
        return json.loads(payload) if payload else {}

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: every home-ish directory under ``tmp`` (pitfall 8).

    MPLBACKEND is dropped so the kernel keeps its inline backend; a CI-wide ``Agg``
    would make ``plt.show()`` inside an Output widget display nothing.
    """
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    dirs = {
        "HOME": "home",
        "JUPYTER_CONFIG_DIR": "jupyter-config",
        "JUPYTER_DATA_DIR": "jupyter-data",
        "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
        "IPYTHONDIR": "ipython",
        "MPLCONFIGDIR": "matplotlib",
        "TMPDIR": "tmp",
    }
    for name, sub in dirs.items():
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(tmp / sub)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")])
    )
    env.update(extra or {})
    return env


def _write_lab_config(config_dir: Path) -> None:
    """Disable the news pop-up (pitfall 5) and autosave, which would write outputs into
    the notebook under test, possibly a file in the repo."""
    labconfig = config_dir / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {name: True for name in DISABLED_LAB_PLUGINS}})
    )
    docmanager = config_dir / "lab" / "user-settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True, exist_ok=True)
    (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))


def _stop(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM lets the server shut its kernels down; SIGKILL the group if it hangs."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


@contextmanager
def lab_server(
    tmp: Path, root_dir: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[LabServer]:
    """Run JupyterLab headless on 127.0.0.1 for the duration of the block.

    ``env`` is added to the server's (and so the kernels') environment. The log is
    ``tmp/jupyterlab.log``; its tail is printed when the block raises.
    """
    env = isolated_env(tmp, env)
    _write_lab_config(Path(env["JUPYTER_CONFIG_DIR"]))
    port, token = _free_port(), secrets.token_hex(16)
    log_path = tmp / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--allow-root",  # pitfall 4
        "--LabApp.expose_app_in_browser=True",  # pitfall 4: window.jupyterapp
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
    ]  # fmt: skip
    runtime_dir = Path(env["JUPYTER_RUNTIME_DIR"])
    server = LabServer(f"http://127.0.0.1:{port}", token, Path(root_dir), runtime_dir, log_path)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            _wait_until_up(server, process, timeout)
            yield server
        except BaseException:
            print(f"--- JupyterLab log ({log_path}), last lines ---\n{server.log_tail()}")
            raise
        finally:
            _stop(process, timeout=15)


def _wait_until_up(server: LabServer, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode} while starting")
        try:
            server.api("GET", "/api/status", timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise TimeoutError(f"JupyterLab did not answer /api/status within {timeout:.0f} s")


def start_kernel_session(
    server: LabServer, notebook: str, kernel_name: str = "python3", timeout: float = 60
) -> str:
    """Create the notebook's session before the page opens it; return the kernel id.

    Pitfall 6: left to itself the page sometimes started two kernels and never ran the
    cells. With the session made here, and its kernel idle, the page just reuses it.
    The server reports a new kernel as "starting" until someone talks to it, so a
    kernel_info request over ZMQ (via its connection file) brings it to "idle".
    """
    from jupyter_client import BlockingKernelClient

    session = server.api(
        "POST",
        "/api/sessions",
        {"path": notebook, "name": Path(notebook).name, "type": "notebook",
         "kernel": {"name": kernel_name}},
    )  # fmt: skip
    kernel_id = session["kernel"]["id"]
    client = BlockingKernelClient()
    client.load_connection_file(server.runtime_dir / f"kernel-{kernel_id}.json")
    client.start_channels()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.wait_for_ready(timeout=max(1.0, deadline - time.monotonic()))
                break
            except RuntimeError:
                # A kernel starting on busy cores can miss its first heartbeats, and the client
                # then calls it dead: ask again while the server still lists it (seen 2 runs in 4).
                server.api("GET", f"/api/kernels/{kernel_id}")  # raises once the kernel is gone
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        # The server learns the kernel's state from status messages on its own iopub link, which
        # may connect after our first request: ask again until the server has seen one.
        deadline = time.monotonic() + timeout
        while (state := server.api("GET", f"/api/kernels/{kernel_id}")["execution_state"]) != "idle":
            if time.monotonic() > deadline:
                raise TimeoutError(f"kernel {kernel_id} answered but the server says {state!r}")
            client.kernel_info()
            time.sleep(0.5)
    finally:
        client.stop_channels()
    return kernel_id


# --------------------------------------------------------------------------- browser


@contextmanager
def chromium_page(
    tmp: Path, timeout: float = 60, viewport: tuple[int, int] = (1280, 1600)
) -> Iterator[Page]:
    """A Playwright page in Debian's Chromium with a fresh profile under ``tmp``.

    Chromium gets the same home-ish directories as the server, or it writes crash
    report settings and dconf caches into the real home. The page's console goes to
    ``tmp/browser-console.log``; its tail is printed when the block raises.
    ``timeout`` (seconds) is the default for every Playwright wait.
    """
    from playwright.sync_api import sync_playwright

    profile = tmp / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    console: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            env=isolated_env(tmp),
            viewport={"width": viewport[0], "height": viewport[1]},
            timeout=timeout * 1000,
        )
        try:
            context.set_default_timeout(timeout * 1000)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda msg: console.append(f"[{msg.type}] {msg.text}"))
            page.on("pageerror", lambda err: console.append(f"[pageerror] {err}"))
            yield page
        except BaseException:
            print("--- browser console, last lines ---\n" + "\n".join(console[-40:]))
            raise
        finally:
            (tmp / "browser-console.log").write_text("\n".join(console))
            context.close()


# JS: the open notebook panel for a path (JupyterLab 4 shell API).
_FIND_PANEL = """path => Array.from(window.jupyterapp.shell.widgets('main'))
    .find(w => w.context && w.context.path === path && w.content && w.sessionContext)"""


def open_notebook(page: Page, server: LabServer, notebook: str, timeout: float = 90) -> str:
    """Open ``notebook`` (path relative to the server's root) with its kernel ready.

    Returns the kernel id. Waits until the page's panel is attached to the kernel that
    :func:`start_kernel_session` made and that kernel is idle, so run-all cannot race.
    """
    kernel_id = start_kernel_session(server, notebook, timeout=timeout)
    page.goto(f"{server.url}/lab/tree/{notebook}?token={server.token}", timeout=timeout * 1000)
    wait_for_kernel(page, notebook, kernel_id, timeout)
    return kernel_id


def wait_for_kernel(page: Page, notebook: str, kernel_id: str, timeout: float = 90) -> None:
    """Wait until the page's panel for ``notebook`` is attached to kernel ``kernel_id`` and that kernel is idle."""
    page.wait_for_function(
        f"""([path, kernelId]) => {{
            if (!window.jupyterapp) return false;
            const panel = ({_FIND_PANEL})(path);
            const kernel = panel && panel.context.isReady && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            return !!kernel && kernel.id === kernelId && kernel.status === 'idle';
        }}""",
        arg=[notebook, kernel_id],
        timeout=timeout * 1000,
    )


def save_notebook(page: Page, notebook: str) -> None:
    """Save the open notebook (its outputs then name the live kernel's widgets, as autosave would)."""
    page.evaluate(
        f"""async path => {{
            const panel = ({_FIND_PANEL})(path);
            await panel.context.save();
        }}""",
        notebook,
    )


def reload_page(page: Page, notebook: str, kernel_id: str, timeout: float = 90) -> None:
    """Reload the page, as a user would, and wait until the notebook is back on the same, still running kernel."""
    page.reload(timeout=timeout * 1000)
    wait_for_kernel(page, notebook, kernel_id, timeout)


def run_all_cells(page: Page, notebook: str, timeout: float = 120) -> None:
    """Run every cell through JupyterLab's own command and wait for the last to finish.

    Raises AssertionError listing the cells' errors, so a broken notebook is told apart
    from a broken browser stack.
    """
    finished = page.evaluate(
        f"""async ([path, ms]) => {{
            const panel = ({_FIND_PANEL})(path);
            jupyterapp.shell.activateById(panel.id);
            const run = jupyterapp.commands.execute('notebook:run-all-cells');
            const late = new Promise(resolve => setTimeout(() => resolve('timeout'), ms));
            return String(await Promise.race([run, late]));
        }}""",
        [notebook, timeout * 1000],
    )
    errors = notebook_errors(page, notebook)
    if errors:
        raise AssertionError(f"{notebook} raised in the browser:\n" + "\n".join(errors))
    if finished == "timeout":
        raise TimeoutError(f"{notebook}: cells still running after {timeout:.0f} s")
    if finished != "true":
        raise AssertionError(f"{notebook}: JupyterLab reports the run failed ({finished})")


def notebook_errors(page: Page, notebook: str) -> list[str]:
    """``ename: evalue`` of every error output in the open notebook."""
    return page.evaluate(
        f"""path => {{
            const panel = ({_FIND_PANEL})(path);
            const errors = [];
            panel.content.widgets.forEach((cell, index) => {{
                if (cell.model.type !== 'code') return;
                const outputs = cell.model.outputs;
                for (let i = 0; i < outputs.length; i++) {{
                    const out = outputs.get(i).toJSON();
                    if (out.output_type === 'error')
                        errors.push(`cell[${{index}}] ${{out.ename}}: ${{out.evalue}}`);
                }}
            }});
            return errors;
        }}""",
        notebook,
    )


def wait_visible(page: Page, selectors: Iterable[str], timeout: float = 60) -> None:
    """Wait for the first match of each CSS selector to be visible; name the one missing."""
    for selector in selectors:
        try:
            page.locator(selector).first.wait_for(state="visible", timeout=timeout * 1000)
        except Exception as error:
            raise AssertionError(f"{selector!r} not visible within {timeout:.0f} s") from error


def screenshot(page: Page, selector: str, path: Path) -> Path:
    """PNG of the first element matching ``selector`` (scrolled into view)."""
    page.locator(selector).first.screenshot(path=str(path))
    return path


def assert_not_blank(png: Path, min_colours: int = 16, max_share: float = 0.98) -> None:
    """Fail when the picture is (nearly) one flat colour: a widget that did not draw."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=rgb.width * rgb.height)
    top, colour = max(colours)
    share = top / (rgb.width * rgb.height)
    assert len(colours) >= min_colours and share <= max_share, (
        f"{png} looks blank: {len(colours)} colours, {colour} covers {share:.1%} of pixels"
    )
