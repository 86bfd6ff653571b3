"""A tiny saved run and a running ``mlasm serve`` on it, for tests/test_serve.py and benchmarks/serve_visitors.py.

``tiny_run(folder)`` trains the tiny model of the widget tests (48 ShapeScenes training images, one
epoch, seconds), evaluates it on 16 test images (so ``scores.npz`` is saved beside it, as ``mlasm demo``
does) and writes the splits as a precomp folder: ``mlasm serve --run RUN --data DATA`` serves it.

``served(tmp, run, data)`` starts ``python -m mlasm serve`` in its own process group on a free
loopback port, waits for its "open http://..." line and yields a ``Served`` (address, process, log);
it always stops the server (SIGINT, then SIGKILL of the group) and never leaves a kernel behind.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
from cli_support import TINY as TINY_SETTINGS, TINY_SIZES  # noqa: E402

TINY = dict(TINY_SETTINGS, epochs=1)


def tiny_run(folder: Path) -> tuple[Path, Path]:
    """(run folder, data folder): a tiny trained model with its saved test scores, and its splits."""
    import torch

    from mlasm.config import MLASMConfig
    from mlasm.data.precomp import write_split
    from mlasm.data.shapescenes import load_shapescenes
    from mlasm.evaluate import evaluate_checkpoints
    from mlasm.train import train

    run, data = folder / "run", folder / "data"
    splits = {name: load_shapescenes(name, sizes=TINY_SIZES, cache=folder / "cache", progress=False)
              for name in ("train", "dev", "test")}
    for name, split in splits.items():
        write_split(data, name, split)
    torch.manual_seed(0)
    best = train(MLASMConfig.cpu(**TINY), splits["train"], splits["dev"], run, progress=False)["best"]
    evaluate_checkpoints([best], splits["test"], out_dir=run, progress=False)
    return run, data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc): the kernels a server started."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting to be reaped, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Served:
    url: str                       # http://127.0.0.1:PORT/ (with ?token=... when one is needed)
    port: int
    process: subprocess.Popen
    log_path: Path
    kernels_seen: set[int] = field(default_factory=set)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def processes(self) -> set[int]:
        """Every process below the server now (remembered, to check that they end)."""
        now = descendants(self.process.pid)
        self.kernels_seen |= now
        return now

    def warm_process(self) -> set[int]:
        """The process the kernels are forked from (mlasm.kernel_fork), when there is one."""
        return {pid for pid in self.processes() if parent_of(pid) == self.process.pid and "--warm" in command_of(pid)}

    def kernels(self) -> set[int]:
        """One process per kernel Jupyter started: its stand-in (mlasm.kernel_fork -f), or the ipykernel."""
        return {pid for pid in self.processes() if "kernel-" in command_of(pid) and " -f " in command_of(pid)}

    def visitor_processes(self) -> set[int]:
        """What the visitors cost: every process below the server but the warm one."""
        return self.processes() - self.warm_process()


def serve_environment(tmp: Path) -> dict[str, str]:
    from browser_support import isolated_env

    cache = os.environ.get("MLASM_CACHE_DIR") or str(tmp / "mlasm-cache")  # the ShapeScenes cache, when there is one
    return isolated_env(tmp, {"OMP_NUM_THREADS": "1", "MLASM_CACHE_DIR": cache})


@contextmanager
def served(tmp: Path, run: Path, data: Path, *options: str, timeout: float = 90) -> Iterator[Served]:
    """``mlasm serve`` on ``run`` for the block; stopped with SIGINT (as Ctrl-C) afterwards."""
    port = free_port()
    log_path = tmp / "serve.log"
    command = [sys.executable, "-m", "mlasm", "serve", "--run", str(run), "--data", str(data),
               "--port", str(port), *options]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=tmp, env=serve_environment(tmp), stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = None
    try:
        deadline = time.monotonic() + timeout
        while server is None:
            found = re.search(r"^open (http://\S+)", log_path.read_text(errors="replace"), re.M)
            if found:
                server = Served(found.group(1), port, process, log_path)
            elif process.poll() is not None:
                raise RuntimeError(f"mlasm serve exited with {process.returncode}:\n{log_path.read_text()}")
            elif time.monotonic() > deadline:
                raise TimeoutError(f"mlasm serve printed no address within {timeout:.0f} s")
            else:
                time.sleep(0.2)
        _wait_listening(port, deadline)
        yield server
    except BaseException:
        print(f"--- mlasm serve log ({log_path}) ---\n{log_path.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        stop(process, also=server.kernels_seen if server else ())


def _wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


def stop(process: subprocess.Popen, timeout: float = 30, also=()) -> int:
    """SIGINT, as Ctrl-C; SIGKILL of the whole group if it hangs, and of any kernel (``also``) left.
    Returns the exit status."""
    below = set(also)
    if process.poll() is None:
        below |= descendants(process.pid)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
    for pid in below:  # never leave a kernel behind, whatever the test found
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return process.returncode


class KernelSocket:
    """A kernel's websocket as a script would use it: the default protocol (not v1), JSON messages out,
    and in, JSON text or binary frames (a big-endian count of offsets, then the message's JSON, then buffers)."""

    def __init__(self, socket, session: str):
        self.socket, self.session = socket, session

    @classmethod
    async def connect(cls, url: str, kernel: str) -> "KernelSocket":
        import uuid

        from tornado.websocket import websocket_connect

        session = uuid.uuid4().hex
        socket = await websocket_connect(f"{url.split('?')[0].replace('http', 'ws', 1)}api/kernels/{kernel}/channels"
                                         f"?session_id={session}")
        return cls(socket, session)

    async def send(self, kind: str, content: dict, metadata: dict | None = None) -> dict:
        import json
        import uuid

        header = {"msg_id": uuid.uuid4().hex, "msg_type": kind, "username": "student", "session": self.session,
                  "date": "", "version": "5.3"}
        message = {"header": header, "parent_header": {}, "metadata": metadata or {}, "content": content,
                   "channel": "shell", "buffers": []}
        await self.socket.write_message(json.dumps(message))
        return message

    async def receive(self, timeout: float) -> tuple[dict | None, bool]:
        """The next message and whether it came as a binary frame; (None, False) once the socket is closed."""
        import asyncio
        import json

        raw = await asyncio.wait_for(self.socket.read_message(), timeout=timeout)
        if raw is None:
            return None, False
        if isinstance(raw, str):
            return json.loads(raw), False
        count = int.from_bytes(raw[:4], "big")
        start, end = (int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in (1, 2)) if count > 1 else (8, None)
        return json.loads(raw[start:end]), True

    async def widget_states(self, timeout: float = 30) -> tuple[dict, bool]:
        """Every widget's state through ipywidgets' control comm, and whether it came as a binary frame."""
        import time
        import uuid

        comm = uuid.uuid4().hex
        await self.send("comm_open", {"comm_id": comm, "target_name": "jupyter.widget.control", "data": {}},
                        {"version": "1.0.0"})
        await self.send("comm_msg", {"comm_id": comm, "data": {"method": "request_states"}})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message, binary = await self.receive(timeout)
            if message and message["msg_type"] == "comm_msg" and \
                    message["content"]["data"].get("method") == "update_states":
                return message["content"]["data"]["states"], binary
        raise TimeoutError(f"no widget states within {timeout:.0f} s")

    async def set_widget(self, model_id: str, state: dict, timeout: float = 60) -> float:
        """Seconds until the kernel is idle again after a widget's new state (what a page's control sends)."""
        import time

        started = time.monotonic()
        sent = await self.send("comm_msg", {"comm_id": model_id, "data": {"method": "update", "state": state,
                                                                          "buffer_paths": []}})
        while True:
            message, _ = await self.receive(timeout)
            if message is None:
                raise ConnectionError("the kernel's websocket closed")
            if message["msg_type"] == "status" and message["parent_header"].get("msg_id") == sent["header"]["msg_id"] \
                    and message["content"]["execution_state"] == "idle":
                return time.monotonic() - started

    def close(self) -> None:
        self.socket.close()
