"""``mlasm serve``: the workbench as web pages for a class (Voilà), checked without and with a real server.

Without a server: which run and checkpoint are served, the token rule, the memory-mapped scores,
the teaching tasks' answers (against an independent computation), downloads instead of saves.
With ``python -m mlasm serve`` on a tiny run (seconds to train): the first page, a student's page
with no code and no traceback, an ``execute_request`` sent over the kernel's websocket refused,
the class-full page past the seat limit, the token asked for, and Ctrl-C ending every kernel.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mlasm.cli import main  # noqa: E402
from mlasm.checkpoint import load_model  # noqa: E402
from mlasm.data.precomp import read_split  # noqa: E402
from mlasm.saved_scores import find_saved_scores  # noqa: E402
from mlasm.serve import (  # noqa: E402
    DEFAULT_RUN,
    ServeSettings,
    choose_token,
    is_loopback,
    load_shared_scores,
    run_checkpoint,
    shared_scores_folder,
    voila_arguments,
)
from serve_support import KernelSocket, alive, command_of, parent_of, served, tiny_run  # noqa: E402
from widgets.classroom import TeachingTasks, failure_sentence, teaching_page, toy_red_weights, toy_scores  # noqa: E402
from widgets.saving import SaveButtons  # noqa: E402
from mlasm.session import WorkbenchSession  # noqa: E402


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def session(run_and_data):
    run, data = run_and_data
    model, vocab, _ = load_model(run / "best.pt", "cpu")
    return WorkbenchSession(model, vocab, read_split(data, "test"))


def get(url: str, timeout: float = 120) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


# --- without a server ---------------------------------------------------------------------------


def test_the_checkpoint_of_a_run_and_what_to_do_without_one(tmp_path, monkeypatch, capsys):
    (tmp_path / "demo" / "mlasm").mkdir(parents=True)
    (tmp_path / "demo" / "mlasm" / "best.pt").write_bytes(b"")
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "best.pt").write_bytes(b"")
    assert run_checkpoint(tmp_path / "demo") == tmp_path / "demo" / "mlasm" / "best.pt"
    assert run_checkpoint(tmp_path / "trained") == tmp_path / "trained" / "best.pt"

    monkeypatch.chdir(tmp_path)  # no runs/demo here: the one line says how to make one
    assert main(["serve"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"{DEFAULT_RUN}: no run to serve" in error and "mlasm demo" in error, error
    assert main(["serve", "--run", "nowhere"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--run nowhere: no checkpoint there" in error and "Traceback" not in error, error


def test_a_token_is_needed_off_the_loopback_address():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("lab-pc.local")
    assert choose_token("127.0.0.1", None) == ""
    made = {choose_token("0.0.0.0", None) for _ in range(3)}
    assert len(made) == 3 and all(len(token) >= 20 for token in made)  # new and unguessable each time
    assert choose_token("0.0.0.0", "given") == choose_token("127.0.0.1", "given") == "given"


def test_voila_is_told_the_seat_limit_the_idle_time_and_no_tracebacks(tmp_path):
    settings = ServeSettings(run=tmp_path, host="127.0.0.1", port=9999, max_visitors=12, idle_minutes=5)
    arguments = voila_arguments(settings, tmp_path, "")
    for expected in ("--ClassroomKernelManager.max_kernels=12", "--MappingKernelManager.cull_idle_timeout=300",
                     "--MappingKernelManager.cull_connected=True", "--VoilaConfiguration.show_tracebacks=False",
                     "--Voila.ip=127.0.0.1", "--Voila.port=9999", "--Voila.token="):
        assert expected in arguments


def test_every_visitor_reads_one_memory_mapped_copy_of_the_saved_scores(run_and_data, tmp_path, monkeypatch):
    run, data = run_and_data
    monkeypatch.setenv("MLASM_CACHE_DIR", str(tmp_path))
    split = read_split(data, "test")
    saved, _ = find_saved_scores(run / "best.pt", split)
    folder = shared_scores_folder(run / "best.pt", split)
    assert folder.is_relative_to(tmp_path) and not any(run.glob("*.npy"))  # nothing written into the run
    mapped = load_shared_scores(folder)
    assert set(mapped) == set(saved)
    for level, matrix in mapped.items():
        assert isinstance(matrix, np.memmap) and not matrix.flags.writeable
        np.testing.assert_array_equal(matrix, saved[level])
    model, vocab, _ = load_model(run / "best.pt", "cpu")
    opened = WorkbenchSession(model, vocab, split, scores=mapped)
    assert all(np.shares_memory(opened.scores[level], mapped[level]) for level in opened.levels)  # not copied


def test_the_caption_task_is_answered_as_the_two_levels_rank(session):
    tasks = TeachingTasks(session)
    truth = session.truth  # (N, M): is caption m true of image n
    answers = {}
    for caption in range(session.split.n_captions):
        t2i_best = int(np.argmax(session.scores["t2i"][:, caption]))
        i2t_best = int(np.argmax(session.scores["i2t"][:, caption]))
        expected = bool(truth[t2i_best, caption]) and not bool(truth[i2t_best, caption])
        found, sentence = tasks.check_caption(caption)
        assert found == expected, (caption, sentence)
        assert sentence.startswith("Found one" if expected else "Not this one")
        assert f"image {t2i_best} first" in sentence and f"image {i2t_best} first" in sentence
        answers[caption] = found
    assert len(set(answers.values())) == 2, "the tiny model should give both answers somewhere"


def test_the_word_task_accepts_only_the_kind_that_points_worst(session):
    tasks = TeachingTasks(session)
    summary = tasks.word_summary()
    pointing = summary["pointing %"].to_dict()
    worst = min(pointing, key=pointing.get)
    assert tasks.check_word_kind(worst)[0] and tasks.check_word_kind(worst)[1].startswith("Yes")
    for kind in pointing:
        if pointing[kind] > pointing[worst]:
            found, sentence = tasks.check_word_kind(kind)
            assert not found and sentence.startswith("Not quite") and f"{pointing[kind]:.0f}%" in sentence
    ungrounded = [kind for kind in tasks.word_kinds() if kind not in pointing]
    if ungrounded:
        assert tasks.check_word_kind(ungrounded[0]) == (
            False, f"There are no grounded {ungrounded[0]} words here; choose another kind.")


def test_the_teaching_page_checks_what_the_student_chose(session):
    page = teaching_page(session)
    first, second = page.task_boxes
    page.selection.select(caption=3)
    first.check_button.click()
    assert TeachingTasks(session).check_caption(3)[1].split(":")[0] in first.answer.value
    page.kind_menu.value = page.kind_menu.options[0]
    second.check_button.click()
    assert "mlasm-answer" in second.answer.value and "Traceback" not in second.answer.value


def test_the_toy_ties_a_bag_of_words_and_attention_without_context():
    # by hand: the mean of A's regions and of B's are the same vector, so every caption ties
    for words in ("context-free", "contextual"):
        scores = toy_scores(words, 9.0)
        assert scores["A bag"] == pytest.approx(scores["B bag"])
    alone, in_context = toy_scores("context-free", 9.0), toy_scores("contextual", 9.0)
    assert alone["A attention"] == pytest.approx(alone["B attention"], abs=1e-4)  # float32 softmax noise
    assert in_context["A attention"] > in_context["B attention"] + 0.01
    # "red" in context over B (blue circle, red square): more λ, more weight on the red square; sums to 1
    weights = [toy_red_weights(value) for value in (0.5, 2.0, 9.0, 30.0)]
    assert all(sum(w) == pytest.approx(1.0) for w in weights)
    assert [w[1] for w in weights] == sorted(w[1] for w in weights) and weights[-1][1] > 0.9


def test_served_save_buttons_offer_a_download_and_write_nothing(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    buttons = SaveButtons(lambda: fig, str(tmp_path / "figures" / "picture"))
    monkeypatch.setenv("MLASM_SERVED", "1")
    for fmt, kind in (("png", "image/png"), ("svg", "image/svg+xml")):
        assert buttons.save(fmt) is None
        assert f"download='picture.{fmt}'" in buttons.status.value and f"data:{kind};base64," in buttons.status.value
    assert not (tmp_path / "figures").exists()
    monkeypatch.delenv("MLASM_SERVED")
    assert buttons.save("png") == tmp_path / "figures" / "picture.png"  # in a notebook it writes the file
    plt.close(fig)


def test_a_failure_is_one_sentence():
    sentence = failure_sentence(ValueError("the query '' has\nno words"))
    assert "\n" not in sentence and sentence.startswith("That did not work: the query '' has no words.")


# --- with a server --------------------------------------------------------------------------------

@pytest.fixture
def needs_voila():
    pytest.importorskip("voila", reason="mlasm serve needs the [serve] extra (pip install -e '.[serve]')")


def kernel_id_of(page: str) -> str:
    found = json.loads(page.split('"kernelId": ', 1)[1].split(",", 1)[0])
    uuid.UUID(found)
    return found


async def send_over_the_kernel_websocket(url: str, kernel: str, tmp: Path) -> tuple[list[dict], Path]:
    """An execute_request (that would write a file) then a kernel_info_request; every reply seen within 5 s."""
    from tornado.websocket import websocket_connect

    marker = tmp / "code-ran.txt"
    session = uuid.uuid4().hex
    socket = await websocket_connect(f"{url.replace('http', 'ws', 1).split('?')[0]}api/kernels/{kernel}/channels"
                                     f"?session_id={session}")

    def message(kind: str, content: dict) -> dict:
        header = {"msg_id": uuid.uuid4().hex, "msg_type": kind, "username": "student", "session": session,
                  "date": "", "version": "5.3"}
        return {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell",
                "buffers": []}

    execute = message("execute_request", {"code": f"open({str(marker)!r}, 'w').write('ran')", "silent": False,
                                          "store_history": False, "user_expressions": {}, "allow_stdin": False})
    info = message("kernel_info_request", {})
    await socket.write_message(json.dumps(execute))
    await socket.write_message(json.dumps(info))
    seen, deadline = [], time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            raw = await asyncio.wait_for(socket.read_message(), timeout=max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if raw is None:
            break
        if isinstance(raw, str):
            seen.append(json.loads(raw))
    socket.close()
    ids = {"execute": execute["header"]["msg_id"], "info": info["header"]["msg_id"]}
    return [dict(m, sent=next((k for k, v in ids.items() if v == m["parent_header"].get("msg_id")), None))
            for m in seen], marker


async def ask_for_every_widget_state(url: str, kernel: str) -> tuple[int, bool]:
    """On the default websocket protocol (no v1), as a script would: the widgets' states through
    ipywidgets' control comm. Returns (how many states, whether they came as a binary frame)."""
    socket = await KernelSocket.connect(url, kernel)
    try:
        states, binary = await socket.widget_states()
    finally:
        socket.close()
    return len(states), binary


@pytest.mark.slow
def test_a_class_on_one_server_pages_no_code_seats_and_ctrl_c(needs_voila, run_and_data, short_tmp):
    run, data = run_and_data
    with served(short_tmp, run, data, "--max-visitors", "2") as server:
        status, first = get(server.url)
        assert status == 200 and "voila/render/workbench.ipynb" in first and "voila/render/teaching.ipynb" in first

        started = time.monotonic()
        status, page = get(server.url + "voila/render/workbench.ipynb")
        print(f"first page: {time.monotonic() - started:.1f} s")
        assert status == 200
        assert "The MLASM workbench" in page  # the guide
        assert "student_workbench()" not in page and "from widgets" not in page  # no code shown
        assert "Traceback" not in page and "mlasm-error" not in page and "That did not work" not in page
        assert "application/vnd.jupyter.widget-view+json" in page  # the workbench widget
        kernel = kernel_id_of(page)

        # The page cannot run code: Voilà drops the execute_request; the kernel answers kernel_info
        seen, marker = asyncio.run(send_over_the_kernel_websocket(server.url, kernel, short_tmp))
        assert any(m["sent"] == "info" and m["msg_type"] == "kernel_info_reply" for m in seen), seen
        assert not [m for m in seen if m["sent"] == "execute"], "the kernel answered the execute_request"
        assert not marker.exists(), "code sent over the websocket ran"
        assert "execute_request" in server.log() and "not allowed" in server.log()

        # A script on the default protocol gets the widgets' states (with pictures: a binary frame),
        # and the server keeps answering everyone (Voilà's own handler froze here: ClassroomKernelWebsocketHandler)
        states, binary = asyncio.run(ask_for_every_widget_state(server.url, kernel))
        assert states > 20 and binary
        started = time.monotonic()
        assert get(server.url, timeout=10)[0] == 200 and time.monotonic() - started < 5

        status, teaching = get(server.url + "voila/render/teaching.ipynb")
        assert status == 200 and "Teaching page" in teaching and "Traceback" not in teaching
        assert "mlasm-error" not in teaching

        status, full = get(server.url + "voila/render/workbench.ipynb", timeout=30)  # a third visitor
        assert status == 503 and "The class is full" in full and "Every seat (2) is taken" in full
        kernels = server.kernels()
        assert len(kernels) == 2, kernels
        forked = [pid for pid in server.processes() if parent_of(pid) in server.warm_process()]
        assert len(server.warm_process()) == 1 and len(forked) == 2, "the kernels were not forked from the warm process"
        # a kernel's stand-in killed outright (as Jupyter kills a kernel that does not stop): its kernel ends too
        stand_in = min(kernels)
        kernel_of = {pid for pid in forked if "--warm" in command_of(pid)}
        os.kill(stand_in, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len([pid for pid in kernel_of if alive(pid)]) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len([pid for pid in kernel_of if alive(pid)]) == 1, "a forked kernel outlived its stand-in"

        server.process.send_signal(signal.SIGINT)  # Ctrl-C
        assert server.process.wait(timeout=60) == 0
        assert "every kernel ended" in server.log()
        left = [pid for pid in server.kernels_seen if alive(pid)]
        assert not left, f"kernels still running after Ctrl-C: {left}"


@pytest.mark.slow
def test_a_token_given_is_asked_for_and_kernels_start_without_a_warm_process(needs_voila, run_and_data, short_tmp):
    run, data = run_and_data
    with served(short_tmp, run, data, "--token", "class-of-2026", "--no-warm") as server:
        assert server.url.endswith("/?token=class-of-2026")
        base = server.url.split("?")[0]
        request = urllib.request.Request(base, method="GET")
        opener = urllib.request.build_opener(NoRedirect)
        try:
            status = opener.open(request, timeout=30).status
        except urllib.error.HTTPError as error:
            status = error.code
        assert status in (302, 403), status  # sent to the login page, or refused
        assert get(server.url, timeout=30)[0] == 200
        # --no-warm: each kernel an ordinary ipykernel, the page the same
        status, page = get(server.url.replace("/?", "/voila/render/workbench.ipynb?"))
        assert status == 200 and "widget-view+json" in page and "mlasm-error" not in page
        assert not server.warm_process() and len(server.kernels()) == 1


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_in_a_served_kernel_an_error_shows_one_sentence_not_a_traceback(capsys):
    import ipywidgets as widgets
    from IPython.core.interactiveshell import InteractiveShell

    from widgets.classroom import one_sentence_errors

    shell = InteractiveShell.instance()
    shown = []
    try:
        shell.display_pub.publish = lambda data, **_: shown.append(data.get("text/html", ""))
        one_sentence_errors()
        shell.run_cell("raise ValueError('no such image: 99')")
        with widgets.Output():  # a widget callback's error, as the views draw inside Output widgets
            raise KeyError("word")
    finally:
        InteractiveShell.clear_instance()
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    assert len(shown) == 2 and all("mlasm-error" in html for html in shown), shown
    assert "That did not work: no such image: 99." in shown[0] and "That did not work: &#x27;word&#x27;." in shown[1]


@pytest.mark.slow
def test_an_idle_visitor_s_kernel_is_ended_and_the_seat_freed(needs_voila, run_and_data, short_tmp):
    run, data = run_and_data
    # one seat; a kernel idle for 3 s is ended (checked every 2 s)
    with served(short_tmp, run, data, "--max-visitors", "1", "--idle-minutes", "0.05") as server:
        assert get(server.url + "voila/render/workbench.ipynb")[0] == 200
        assert len(server.kernels()) == 1
        deadline = time.monotonic() + 60
        while server.kernels() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not server.kernels(), "the idle kernel was not ended"
        assert "seconds of inactivity" in server.log()  # jupyter_server says why it ended the kernel
        # the seat frees once the server has finished shutting the kernel down (a moment after its process ends)
        while (answer := get(server.url + "voila/render/workbench.ipynb"))[0] == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        status, page = answer
        assert status == 200 and "widget-view+json" in page, status
