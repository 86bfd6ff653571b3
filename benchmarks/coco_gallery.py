"""A COCO-5K-shaped gallery: `mlasm evaluate` and a workbench session, time, peak memory and disk.

Writes a precomp split of N images x 36 x 2,048 float32 region features (random, chunk by chunk)
and 5 N captions with COCO-like lengths (benchmarks/bench_scorer.py's log-normal, mean 11.3,
99th percentile 20), and a checkpoint of an untrained MLASM with the real sizes (embedding 1,024).
Then, each in a fresh process (peak RSS as /proc/self/status's VmHWM: ru_maxrss is kept across fork and
exec, so a child would start at this script's peak; wall time; bytes written):

  evaluate   `mlasm evaluate` on one thread (--evaluate; at full size it takes ~22 min on 2 idle
             cores: measure it at a small --images)
  session    WorkbenchSession.from_checkpoint on the evaluation folder, choosing a caption (the data
             behind every linked view: its image scores, the pair's levels, the explanation and
             contributions, the valid items), choosing an image (likewise), the failure list's first page.

With --random-scores the evaluation folder is not made by `mlasm evaluate` but written directly
with random scores (own pairs a little higher), through the same writers evaluate uses: a score
store (--layout store) or scores.npz (--layout npz, what earlier versions wrote), with ranks.npz
and metrics.json, so that a session at 5,000 x 25,000 is measured without 22 minutes of scoring.
--code PATH runs the measured processes on another checkout's mlasm (e.g. the code before a change).

    python benchmarks/coco_gallery.py --images 500 --evaluate
    python benchmarks/coco_gallery.py --images 5000 --random-scores --layout store
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scorer import caption_lengths  # noqa: E402  benchmarks/, beside this script
from table import print_markdown_table  # noqa: E402

WORDS = [f"w{k}" for k in range(2000)]  # a vocabulary of made-up words

SESSION = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from mlasm.session import WorkbenchSession

    def peak_mb():  # VmHWM: ru_maxrss would start at the parent's peak (kept across fork and exec)
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024

    checkpoint, data, out = sys.argv[1:4]
    times = {"import_peak_mb": peak_mb()}
    from mlasm.sources import open_split
    open_split(data, "test", progress=False)  # what the split alone costs (opened again below)
    times["split_peak_mb"] = peak_mb()
    started = time.perf_counter()
    session = WorkbenchSession.from_checkpoint(checkpoint, data, "test", device="cpu", saved_scores=[out])
    times["open_s"], times["open_peak_mb"] = time.perf_counter() - started, peak_mb()
    assert session.scores_source is not None, "the saved scores were not found"
    n_images, n_captions = session.split.n_images, session.split.n_captions
    caption, image = n_captions // 3, n_images // 2
    started = time.perf_counter()
    session.image_scores(caption); session.valid_items("t2i", caption)
    shown = int(session.split.caption_to_image[caption])
    session.pair_levels(shown, caption); session.explain(shown, caption); session.contributions(shown, caption)
    times["choose_caption_s"] = time.perf_counter() - started
    started = time.perf_counter()
    session.caption_scores(image); session.valid_items("i2t", image)
    mine = int(session.valid_captions(image)[0])
    session.pair_levels(image, mine); session.explain(image, mine); session.contributions(image, mine)
    times["choose_image_s"] = time.perf_counter() - started
    started = time.perf_counter()
    first_page = session.failures(1).head(20)
    times["failures_page_s"] = time.perf_counter() - started
    times["peak_mb"] = peak_mb()
    print(json.dumps(times))
""")

EVALUATE = textwrap.dedent("""
    import json, sys, time
    from mlasm.cli import main
    started = time.perf_counter()
    code = main(["evaluate", "--checkpoint", sys.argv[1], "--data", sys.argv[2], "--split", "test",
                 "--out", sys.argv[3], "--threads", "1", *sys.argv[4:]])
    print(json.dumps({"evaluate_s": time.perf_counter() - started, "peak_mb": next(
        int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024}))
""")


def make_split(folder: Path, n_images: int, seed: int = 0) -> None:
    """N x 36 x 2,048 random features (written in chunks) and 5 N captions of COCO-like lengths."""
    rng = np.random.default_rng(seed)
    features = np.lib.format.open_memmap(folder / "test_ims.npy", mode="w+", dtype=np.float32,
                                         shape=(n_images, 36, 2048))
    for start in range(0, n_images, 200):
        stop = min(n_images, start + 200)
        features[start:stop] = rng.random((stop - start, 36, 2048), dtype=np.float32)
    features.flush()
    del features
    lengths = caption_lengths("coco", 5 * n_images).tolist()
    with open(folder / "test_caps.txt", "w", encoding="utf-8") as f:
        for length in lengths:
            f.write(" ".join(rng.choice(WORDS, size=length)) + "\n")
    (folder / "test_ids.txt").write_text("".join(f"{100000 + i}\n" for i in range(n_images)))


def make_checkpoint(folder: Path, data: Path) -> Path:
    from mlasm.checkpoint import save_checkpoint
    from mlasm.config import MLASMConfig
    from mlasm.data.precomp import read_split
    from mlasm.data.vocab import Vocabulary
    from mlasm.model import MLASM
    from mlasm.run_folder import config_for_data

    split = read_split(str(data), "test")
    vocab = Vocabulary.build(split.captions)
    torch.manual_seed(0)
    model = MLASM(config_for_data(MLASMConfig.cpu(embed_size=1024), split, vocab))
    save_checkpoint(folder / "model.pt", model, vocab, {})
    return folder / "model.pt"


def write_random_scores(checkpoint: Path, data: Path, out: Path, layout: str, seed: int = 0) -> None:
    """An evaluation folder with random scores, through evaluate's writers (see the module's docstring)."""
    from mlasm.data.precomp import read_split
    from mlasm.evaluate import TOP_K_SAVED
    from mlasm.io import write_together
    from mlasm.levels import LEVELS
    from mlasm.saved_scores import SCORES_FILE, scores_fingerprint, write_scores
    from mlasm.score_store import StoreWriter
    from mlasm.store_measures import measure_store

    split = read_split(str(data), "test")
    fingerprint = scores_fingerprint([checkpoint], split)
    shape, rows = (split.n_images, split.n_captions), 100
    rng = np.random.default_rng(seed)
    writer = StoreWriter(out, fingerprint, shape, LEVELS, rows)
    for start in range(0, shape[0], rows):
        stop = min(shape[0], start + rows)
        own = split.caption_to_image[None, :] == np.arange(start, stop)[:, None]
        writer.write_band(start, {level: rng.standard_normal((stop - start, shape[1]), dtype=np.float32) + 2.5 * own
                                  for level in LEVELS})
    scores = writer.matrices()
    metrics, ranks = measure_store(scores, split.caption_to_image, split.positives, TOP_K_SAVED)
    def write_ranks(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, caption_to_image=split.caption_to_image, **ranks)

    files = {out / "ranks.npz": write_ranks}
    if layout == "store":
        files.update(writer.writers(writer.finish()))
    else:
        files[out / SCORES_FILE] = lambda tmp: write_scores(tmp, scores, fingerprint)
    files[out / "metrics.json"] = lambda tmp: tmp.write_text(json.dumps(metrics) + "\n")
    write_together(files)
    writer.remove()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def measure(script: str, args: list[str], code: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if code:
        env["PYTHONPATH"] = code
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images (5 captions each); COCO 5K: 5000")
    parser.add_argument("--evaluate", action="store_true", help="run mlasm evaluate (minutes: use small --images)")
    parser.add_argument("--evaluate-options", default="",
                        help="more options for mlasm evaluate, e.g. '--score-store yes'")
    parser.add_argument("--random-scores", action="store_true", help="write the evaluation folder with random scores")
    parser.add_argument("--layout", choices=("store", "npz"), default="store")
    parser.add_argument("--code", help="a checkout whose mlasm the measured processes run (default: this one)")
    parser.add_argument("--dir", default=".", help="where the temporary folder goes")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlasm-coco-", dir=args.dir) as folder:
        folder = Path(folder)
        data, out = folder / "data", folder / "eval"
        data.mkdir()
        started = time.perf_counter()
        make_split(data, args.images)
        checkpoint = make_checkpoint(folder, data)
        print(f"split and checkpoint made in {time.perf_counter() - started:.0f} s", flush=True)
        shape = f"{args.images} x {5 * args.images}"
        if args.evaluate:
            row = measure(EVALUATE, [str(checkpoint), str(data), str(out), *args.evaluate_options.split()], args.code)
            rows.append({"step": "evaluate", "gallery": shape, **{k: round(v, 2) for k, v in row.items()},
                         "written_mb": round(folder_bytes(out) / 2**20, 1)})
            print(json.dumps(rows[-1]), flush=True)
        elif args.random_scores:
            started = time.perf_counter()
            write_random_scores(checkpoint, data, out, args.layout)
            print(f"random scores ({args.layout}) written in {time.perf_counter() - started:.0f} s, "
                  f"{folder_bytes(out) / 2**20:,.0f} MB", flush=True)
        if out.is_dir():
            row = measure(SESSION, [str(checkpoint), str(data), str(out)], args.code)
            rows.append({"step": "session", "gallery": shape, **{k: round(v, 2) for k, v in row.items()}})
            print(json.dumps(rows[-1]), flush=True)
    for row in rows:  # one table a step: their columns differ
        print_markdown_table([row])


if __name__ == "__main__":
    main()
