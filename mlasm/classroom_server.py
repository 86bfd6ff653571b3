"""Voilà for a class (``mlasm serve``): a seat limit with a "class full" page, a first page of links,
and a kernel websocket that a client on the default protocol cannot freeze.

Imported only by ``mlasm.serve`` (and Voilà, which builds ``ClassroomKernelManager`` from its
configuration): it needs the optional ``serve`` extra.
"""
from __future__ import annotations

import html

import tornado.web
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets import Integer
from voila.app import Voila
from voila.tornado.handler import TornadoVoilaHandler
from voila.tornado.kernel_websocket_handler import VoilaKernelWebsocketHandler
from voila.tornado.treehandler import TornadoVoilaTreeHandler

PAGE_STYLE = ("body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}"
              "a{font-size:1.2em}li{margin:1em 0}")
CLASS_FULL_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>The class is full</title>
<style>{PAGE_STYLE}</style></head><body><h1>The class is full</h1>
<p>Every seat (SEATS) is taken. Try again in a few minutes: a seat frees when someone closes their page
or leaves it idle.</p><p><a href="">Try again</a></p></body></html>"""


class ClassFull(RuntimeError):
    """No kernel is started: ``max_kernels`` run already."""


class ClassroomKernelManager(AsyncMappingKernelManager):
    """At most ``max_kernels`` kernels; one more is refused with ``ClassFull`` before anything starts.

    The seat is taken before the first ``await``, so visitors arriving at once cannot overshoot.
    """

    max_kernels = Integer(30, config=True, help="the most kernels (visitors) at once")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._starting = 0

    def seats_taken(self) -> int:
        return len(self.list_kernel_ids()) + self._starting

    def full(self) -> bool:
        return self.seats_taken() >= self.max_kernels

    async def start_kernel(self, *args, **kwargs):
        if kwargs.get("kernel_id") is None and self.full():
            raise ClassFull(f"{self.max_kernels} visitors already")
        self._starting += 1
        try:
            return await super().start_kernel(*args, **kwargs)
        finally:
            self._starting -= 1


class ClassroomPageHandler(TornadoVoilaHandler):
    """A page for a visitor, or the "class full" page (503) when every seat is taken."""

    def _class_full(self) -> None:
        self.clear()
        self.set_status(503)
        self.set_header("Retry-After", "60")
        self.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
        self.finish(CLASS_FULL_PAGE.replace("SEATS", str(self.kernel_manager.max_kernels)))

    @tornado.web.authenticated
    async def get(self, path=None):
        if self.kernel_manager.full():
            return self._class_full()
        try:
            async for part in self.get_generator(path=path):
                self.write(part)
                self.flush()
        except ClassFull:  # taken by a visitor who arrived at the same moment; nothing was sent yet
            return self._class_full()


PAGES = {  # file name -> (title on the first page, what it is for, the code its one hidden cell runs)
    "workbench.ipynb": ("The workbench", "explore one model: attention maps, levels, rankings and failures",
                        "from widgets.classroom import student_workbench\nstudent_workbench()"),
    "teaching.ipynb": ("Teaching page", "why cross attention binds words to regions, with tasks the page checks",
                       "from widgets.classroom import teaching_page\nteaching_page()"),
}

class FirstPageHandler(JupyterHandler):
    """The address students are given: a link to each page, with a line on what it is for."""

    @tornado.web.authenticated
    def get(self):
        items = "".join(f'<li><a href="{self.base_url}voila/render/{name}">{html.escape(title)}</a><br>'
                        f"{html.escape(about)}</li>" for name, (title, about, _) in PAGES.items())
        self.set_header("Cache-Control", "no-cache")
        self.finish(f"""<!doctype html><html><head><meta charset="utf-8"><title>MLASM workbench</title>
<style>{PAGE_STYLE}</style></head><body><h1>MLASM workbench</h1>
<p>Image-text retrieval, explored. Open a page; what you do there is yours alone.</p><ul>{items}</ul></body></html>""")


class ClassroomKernelWebsocketHandler(VoilaKernelWebsocketHandler):
    """Voilà's kernel websocket, safe for a client that did not ask for the v1 protocol.

    Voilà reads each binary message to the page as the v1 protocol lays it out (a little-endian
    8-byte count of offsets first) to drop ``execute_input`` messages. A client on the default
    protocol gets binary frames only for messages with buffers, laid out otherwise (a big-endian
    4-byte count): read as v1, the count is in the millions and building the list of offsets held
    the server's one loop for every visitor (seen: a script that asked for the widgets' states froze
    the class). Such a frame is never an ``execute_input`` (those carry no buffers): it goes out as
    it is; a frame that fits the v1 layout goes through Voilà's check.
    """

    def write_message(self, message, binary=False):
        if isinstance(message, bytes):
            count = int.from_bytes(message[:8], "little") if len(message) >= 8 else 0
            if not 0 < count <= min(64, len(message) // 8):
                return super(VoilaKernelWebsocketHandler, self).write_message(message, binary)
        return super().write_message(message, binary)


class ClassroomVoila(Voila):
    """Voilà serving a folder of pages, with ``ClassroomPageHandler`` and ``FirstPageHandler`` in its routes."""

    def init_handlers(self):
        handlers = []
        for pattern, handler, *options in super().init_handlers():
            if handler is TornadoVoilaHandler:
                handler = ClassroomPageHandler
            elif handler is VoilaKernelWebsocketHandler:
                handler = ClassroomKernelWebsocketHandler
            elif handler is TornadoVoilaTreeHandler and pattern == self.server_url:
                handler, options = FirstPageHandler, []
            handlers.append((pattern, handler, *options))
        return handlers
