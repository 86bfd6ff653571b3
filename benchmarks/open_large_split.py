"""Opening a precomp split of COCO's size: time and peak memory, at several sizes.

For each size N it writes a split of N images x 36 x 2,048 float32 region features (a sparse
file: no disk space is used, so 113,287 images, 33 GB, are made in a second) and 5 N captions
in a temporary folder, then, in a fresh Python process, times ``read_split`` and reads one
batch of 128 images, and reports the peak memory of that process (ru_maxrss) before, after
opening and after the batch. The folder is removed afterwards.

    python benchmarks/open_large_split.py --images 2000,113287
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from table import print_markdown_table  # benchmarks/table.py, beside this script

MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from mlasm.data.dataset import image_tensors
    from mlasm.data.precomp import read_split

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before = peak_mb()
    started = time.perf_counter()
    split = read_split(sys.argv[1], "train")
    opened = time.perf_counter() - started
    after_open = peak_mb()
    batch = np.random.default_rng(0).choice(split.n_images, 128, replace=False)
    started = time.perf_counter()
    image_tensors(split, batch)
    print(json.dumps({"open_s": opened, "batch_s": time.perf_counter() - started, "peak_before_mb": before,
                      "peak_after_open_mb": after_open, "peak_after_batch_mb": peak_mb()}))
""")


def make_split(folder: Path, n: int) -> None:
    features = np.lib.format.open_memmap(folder / "train_ims.npy", mode="w+", dtype=np.float32, shape=(n, 36, 2048))
    del features
    with open(folder / "train_caps.txt", "w", encoding="utf-8") as f:
        for k in range(5 * n):
            f.write(f"a man in a red shirt is riding a bicycle down the street number {k} .\n")
    (folder / "train_ids.txt").write_text("".join(f"{100000 + i}\n" for i in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="2000,113287")
    args = parser.parse_args()
    rows = []
    for n in (int(v) for v in args.images.split(",")):
        with tempfile.TemporaryDirectory(prefix="mlasm-large-", dir=".") as folder:
            made = time.perf_counter()
            make_split(Path(folder), n)
            made = time.perf_counter() - made
            size_gb = (Path(folder) / "train_ims.npy").stat().st_size / 1e9
            result = subprocess.run([sys.executable, "-c", MEASURE, folder], capture_output=True, text=True,
                                    check=True)
            row = {"images": n, "features_gb": round(size_gb, 1), "made_s": round(made, 1),
                   **{k: round(v, 2) for k, v in json.loads(result.stdout).items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_markdown_table(rows)


if __name__ == "__main__":
    main()
