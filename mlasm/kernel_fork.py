"""Kernels forked from one warm process, for ``mlasm serve``: faster first pages, memory shared by every visitor.

A kernel started the usual way is a new Python that imports torch, matplotlib, pandas, plotly and
the widgets (seconds) and opens the model and the split, each kernel with private copies of all
of it (about 370 MiB). Here one **warm process** (``python -m widgets.classroom --warm SOCKET``,
started by ``mlasm serve``) imports all that and opens the served session once, then forks a kernel
for each visitor: the fork starts in a fraction of a second, and the pages it does not write stay
shared with the warm process and every other kernel (copy-on-write).

Jupyter starts each kernel as ``python -m mlasm.kernel_fork -f CONNECTION_FILE`` (the kernelspec
``mlasm serve`` writes): a small **stand-in** process that asks the warm process for a kernel on
that connection file, handing over its stdin, stdout and stderr, and then stands in for it: a
signal it gets (interrupt, terminate) goes on to the kernel, it exits when the kernel does, and
the kernel ends itself when the stand-in is killed. Without a warm process (its socket absent or
refusing) the stand-in becomes an ordinary ipykernel (``exec``), so a kernel always starts.
"""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import threading
from typing import Callable

WARM_SOCKET = "MLASM_SERVE_WARM_SOCKET"


# --- the stand-in: what Jupyter starts ----------------------------------------------------------

def _ordinary_kernel(argv: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])


def stand_in(argv: list[str]) -> int:
    path = os.environ.get(WARM_SOCKET)
    try:
        link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        link.connect(path or "")
        request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "stand_in": os.getpid()})
        socket.send_fds(link, [request.encode() + b"\n"], [0, 1, 2])
        reply = b""
        while not reply.endswith(b"\n"):
            part = link.recv(4096)
            if not part:
                raise ConnectionError("the warm process closed the link")
            reply += part
        kernel = int(json.loads(reply)["pid"])
        link.close()
    except (OSError, ValueError, KeyError):
        _ordinary_kernel(argv)  # does not return
        return 1
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, lambda number, _frame: _forward(kernel, number))
    try:
        ended = os.pidfd_open(kernel)
    except OSError:  # already gone
        return 0
    while True:
        try:
            if select.select([ended], [], [])[0]:
                return 0
        except InterruptedError:
            continue


def _forward(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


# --- the warm process: forks the kernels ----------------------------------------------------------

def _end_with(pid: int) -> None:
    """In a thread: end this process as soon as ``pid`` ends (its stand-in, or the server)."""
    def watch() -> None:
        try:
            ended = os.pidfd_open(pid)
        except OSError:
            os._exit(0)
        select.select([ended], [], [])
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _kernel(request: dict, fds: list[int]) -> None:
    """In the forked child: become the visitor's kernel (never returns)."""
    try:
        os.setsid()
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _end_with(int(request["stand_in"]))
        from ipykernel.kernelapp import IPKernelApp

        app = IPKernelApp.instance()
        app.initialize(request["argv"])
        # ipywidgets registers its comm targets when imported inside a kernel: here it was imported before
        # there was one, so register them now (the page asks for every widget's state through them)
        import ipywidgets

        ipywidgets.register_comm_target()
        app.start()
    finally:
        os._exit(0)


def warm(path: str, warm_up: Callable[[], None]) -> None:
    """Run ``warm_up`` (import what every page needs, open the served session, build the pages once:
    ``widgets.classroom.warm_up``), then fork a kernel per request on ``path``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle: it ends this process
    import ipykernel.kernelapp  # noqa: F401
    import torch

    torch.set_num_threads(1)  # no thread pool in the process that forks (a fork copies no threads)
    warm_up()
    gc.collect()
    gc.freeze()  # the collector leaves these objects alone, so kernels share their pages longer
    _end_with(os.getppid())
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels are reaped at once; their stand-ins watch them
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    os.replace(path + ".tmp", path)  # the socket appears when the process is ready
    server.listen(64)
    while True:
        link, _ = server.accept()
        try:
            message, fds, _, _ = socket.recv_fds(link, 1 << 20, 3)
            while not message.endswith(b"\n"):
                part = link.recv(1 << 20)
                if not part:
                    break
                message += part
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                server.close()
                link.close()
                _kernel(request, fds)
            for fd in fds:
                os.close(fd)
            link.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except (OSError, ValueError) as error:
            print(f"mlasm serve: warm process: a kernel was not forked: {error}", file=sys.stderr, flush=True)
        finally:
            link.close()


if __name__ == "__main__":  # the warm process is ``python -m widgets.classroom --warm SOCKET``
    raise SystemExit(stand_in(sys.argv[1:]))
