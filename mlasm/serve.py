"""``mlasm serve``: the workbench as web pages for a class, served by Voilà over one saved run.

A teacher starts one command on one machine and gives the class its address. Every visitor gets
a kernel of their own (their own selection), runs no code and sees none: Voilà shows only the
widgets and the text of two pages written here, the **workbench** (``widgets.classroom.student_workbench``)
and a **teaching page** with tasks the page checks (``widgets.classroom.teaching_page``).

What keeps the machine alive and the class safe:

- one kernel per visitor, at most ``--max-visitors``; the next visitor gets a page saying the class
  is full (HTTP 503), never a hang (``ClassroomKernelManager`` refuses the kernel, ``ClassroomVoila``
  answers with the page);
- a kernel idle for ``--idle-minutes`` is ended (jupyter_server's culling, connected kernels too);
- 127.0.0.1 by default; another address needs a token, made here and printed with the address
  (``--token`` to give one);
- the page cannot run code: Voilà's kernel manager passes only comm, kernel_info and shutdown
  messages from the page to a kernel (an ``execute_request`` is dropped); the widgets' save
  buttons offer a download instead of writing a file (``MLASM_SERVED``, ``widgets.saving``);
- the kernels are forked from one warm process that has imported everything and opened the
  model, the split and its encodings (``mlasm.kernel_fork``): a page shows in about a second and
  what the kernels do not change stays shared (``--no-warm``: each kernel starts on its own);
- the score matrices saved with the run are copied once into ``.npy`` files under the cache
  folder and memory-mapped, so the operating system keeps one copy for all;
- Ctrl-C (or SIGTERM) ends every kernel before the command returns.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlasm.data.errors import DataError
from mlasm.io import atomic_path
from mlasm.kernel_fork import WARM_SOCKET
from mlasm.paths import cache_dir
from mlasm.sources import EMBEDDED

DEFAULT_RUN = Path("runs") / "demo"
# what the kernels read, set by serve() in the server's environment (Voilà passes it on to every kernel)
RUN_CHECKPOINT, RUN_DATA, RUN_SPLIT, RUN_FAST, RUN_SCORES, SERVED = (
    "MLASM_SERVE_CHECKPOINT", "MLASM_SERVE_DATA", "MLASM_SERVE_SPLIT", "MLASM_SERVE_FAST", "MLASM_SERVE_SCORES",
    "MLASM_SERVED")
WORKBENCH_GUIDE = """\
# The MLASM workbench

A model that matches pictures with captions. Everything you choose here is yours alone: the
others in the class have pages of their own.

- **Choose** an image (its number) and one of its captions, or type a caption of your own in
  *typed text*.
- **Attention**: pick a word; the picture lights up the regions that word looks at. λ makes
  the attention sharper or softer.
- **Levels**: the scores of the pair at every level of the model, and where each level ranks it.
- **Ranking**: the images a caption finds first (or the captions an image finds).
- **Failures**: queries where nothing right came back in the top k; choose one to see why.
- **Save** buttons download the picture to your computer.
"""
TEACHING_GUIDE = """\
# Teaching page: from bags of words to cross attention

Read from the top; each part has something to try. The tasks at the end are answered by the page
when you have found an answer.
"""


@dataclass
class ServeSettings:
    run: Path
    data: str = EMBEDDED
    split: str = "test"
    host: str = "127.0.0.1"
    port: int = 8866
    max_visitors: int = 30
    idle_minutes: float = 20.0
    token: str | None = None
    warm: bool = True  # kernels forked from one warm process (mlasm.kernel_fork), else ordinary ones


def run_checkpoint(run: str | Path) -> Path:
    """The checkpoint of a saved run: RUN/mlasm/best.pt (``mlasm demo``) or RUN/best.pt (``mlasm train``)."""
    run = Path(run)
    for candidate in (run / "mlasm" / "best.pt", run / "best.pt"):
        if candidate.is_file():
            return candidate
    if run == DEFAULT_RUN and not run.exists():
        raise DataError(f"{run}: no run to serve; make one with `python -m mlasm demo` (about 7 minutes on 2 cores; "
                        f"`--fast` for a tiny one in about a minute) or give --run FOLDER")
    raise DataError(f"--run {run}: no checkpoint there (expected {run}/mlasm/best.pt or {run}/best.pt, "
                    f"as `mlasm demo` or `mlasm train` write them)")


def run_is_fast(run: str | Path) -> bool | None:
    """Whether a demo run was made on tiny ShapeScenes (``mlasm demo --fast``: its demo.json says so);
    None when the run does not say (then MLASM_FAST decides, as everywhere)."""
    info = Path(run) / "demo.json"
    try:
        return bool(json.loads(info.read_text(encoding="utf-8"))["fast"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_token(host: str, token: str | None) -> str:
    """The token visitors need: the one given, none on a loopback address, else a new random one."""
    return token or ("" if is_loopback(host) else secrets.token_urlsafe(16))


def shared_scores_folder(checkpoint: Path, split) -> Path | None:
    """The run's saved score matrices as one ``.npy`` per level, for every kernel to memory-map.

    Made once per saved-scores file (keyed by its SHA-256) under the cache folder, not in the run;
    None when the run has no scores of this checkpoint and split (each kernel then scores the pairs).
    """
    from mlasm.saved_scores import file_digest, find_saved_scores
    from mlasm.score_store import find_store

    stored, where = find_store(checkpoint, split)
    if stored is not None:  # a score store (a large gallery) is one .npy per level already
        return where
    scores, where = find_saved_scores(checkpoint, split)
    if scores is None:
        return None
    folder = cache_dir() / "serve-scores" / file_digest(where)[:16]
    for level, matrix in scores.items():
        target = folder / f"{level}.npy"
        if not target.is_file():
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(matrix, dtype=np.float32))
    return folder


def load_shared_scores(folder: str | Path) -> dict[str, np.ndarray]:
    """Every level's (N, M) matrix from ``shared_scores_folder``, memory-mapped read-only."""
    return {path.stem: np.load(path, mmap_mode="r") for path in sorted(Path(folder).glob("*.npy"))}


KERNEL_NAME = "mlasm-classroom"


def write_kernelspec(folder: Path) -> Path:
    """FOLDER/kernels/mlasm-classroom/kernel.json: a kernel started through ``mlasm.kernel_fork``
    (forked from the warm process when there is one, else an ordinary ipykernel). FOLDER goes on JUPYTER_PATH."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "mlasm.kernel_fork", "-f", "{connection_file}"],
        "display_name": "MLASM classroom", "language": "python", "metadata": {"debugger": False}}))
    return spec


def start_warm_process(folder: Path, timeout: float = 300) -> subprocess.Popen | None:
    """``python -m widgets.classroom --warm`` (mlasm.kernel_fork.warm with the pages' warm-up), ready (its socket
    made) within ``timeout`` s, or None."""
    import time

    path = folder / "warm.sock"
    process = subprocess.Popen([sys.executable, "-m", "widgets.classroom", "--warm", str(path)],
                               stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            print("mlasm serve: the warm process did not start; each visitor's kernel starts on its own",
                  file=sys.stderr, flush=True)
            return None
        time.sleep(0.1)
    os.environ[WARM_SOCKET] = str(path)
    return process


def stop_process(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_pages(folder: Path) -> list[Path]:
    """The two notebooks Voilà serves: a guide in Markdown and one hidden code cell each."""
    import nbformat

    from mlasm.classroom_server import PAGES

    guides = {"workbench.ipynb": WORKBENCH_GUIDE, "teaching.ipynb": TEACHING_GUIDE}
    for name, (_, _, code) in PAGES.items():
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(guides[name]),
                                                   nbformat.v4.new_code_cell(code)])
        notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "MLASM classroom", "language": "python"}
        nbformat.write(notebook, folder / name)
    return [folder / name for name in PAGES]


def voila_arguments(settings: ServeSettings, pages: Path, token: str) -> list[str]:
    """Voilà's command line for a class (see the module docstring for why each setting)."""
    return [
        str(pages),
        "--no-browser",
        f"--Voila.ip={settings.host}",
        f"--Voila.port={settings.port}",
        "--Voila.port_retries=0",
        f"--Voila.token={token}",
        "--VoilaConfiguration.show_tracebacks=False",
        "--VoilaConfiguration.strip_sources=True",
        "--VoilaConfiguration.multi_kernel_manager_class=mlasm.classroom_server.ClassroomKernelManager",
        f"--ClassroomKernelManager.max_kernels={settings.max_visitors}",
        f"--MappingKernelManager.cull_idle_timeout={max(1, round(settings.idle_minutes * 60))}",
        f"--MappingKernelManager.cull_interval={max(1, min(60, round(settings.idle_minutes * 30)))}",
        "--MappingKernelManager.cull_connected=True",
    ]


def serve(settings: ServeSettings) -> int:
    """Serve the pages until Ctrl-C or SIGTERM; every kernel is ended before this returns."""
    try:
        from mlasm.classroom_server import ClassroomVoila
    except ImportError as error:
        raise DataError(f"mlasm serve needs Voilà ({error}); install the extra: pip install -e \".[serve]\"") from None
    from mlasm.sources import open_split

    checkpoint = run_checkpoint(settings.run).resolve()
    fast = run_is_fast(settings.run)
    data = settings.data if settings.data == EMBEDDED else str(Path(settings.data).resolve())  # kernels run elsewhere
    split = open_split(data, settings.split, fast=fast, progress=False)  # checked here, before serving
    scores = shared_scores_folder(checkpoint, split)
    token = choose_token(settings.host, settings.token)
    os.environ.update({RUN_CHECKPOINT: str(checkpoint), RUN_DATA: data, RUN_SPLIT: settings.split,
                       RUN_FAST: "" if fast is None else str(int(fast)), RUN_SCORES: str(scores or ""), SERVED: "1",
                       # many kernels share the cores: one thread each
                       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    # the pages Voilà serves, and beside them (not under them: Voilà lists its folder) the kernelspec
    # and the warm process's socket, in a folder only this user may enter (mkdtemp: mode 0700)
    work = Path(tempfile.mkdtemp(prefix="mlasm-serve-"))
    pages, private = work / "pages", work / "private"
    warm_process = None
    try:
        pages.mkdir()
        private.mkdir()
        write_pages(pages)
        write_kernelspec(private)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(private), os.environ.get("JUPYTER_PATH")]))
        if settings.warm:
            warm_process = start_warm_process(private)
        app = ClassroomVoila()
        app.initialize(voila_arguments(settings, pages, token))
        # Ctrl-C as Voilà takes SIGTERM: the loop stops, then every kernel is shut down (also when the
        # command was started in the background of a shell, which starts it with SIGINT ignored)
        signal.signal(signal.SIGINT, app._handle_signal_stop)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        address = f"http://{host}:{settings.port}/" + (f"?token={token}" if token else "")
        where = "scores memory-mapped from " + str(scores) if scores else "no saved scores: each visitor scores the pairs"
        print(f"mlasm serve: {checkpoint} on {settings.data} {settings.split} ({where}); "
              f"at most {settings.max_visitors} visitors, idle ones ended after {settings.idle_minutes:g} min", flush=True)
        print(f"open {address}   (Ctrl-C to stop)", flush=True)
        try:
            app.start()  # returns on Ctrl-C / SIGTERM, after Voilà has shut every kernel down
        except SystemExit:  # Voilà's way of saying it could not listen
            raise DataError(f"--port {settings.port}: cannot listen there on {settings.host} (in use, or not "
                            f"allowed); give another --port") from None
        print("mlasm serve: stopped; every kernel ended", flush=True)
        return 0
    finally:
        stop_process(warm_process)
        shutil.rmtree(work, ignore_errors=True)
