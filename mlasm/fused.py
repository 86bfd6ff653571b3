"""The all-pairs scorer's local level fused into one C loop per pair (mlasm/kernels/pair_levels.c).

torch runs the two attentions of a block of pairs as about twenty passes over the block's whole
similarity tensor, each bound by memory; the loop reads each pair's (R, L) tile once and does every
step in the caches. It is compiled once per machine with the system C compiler into the cache
folder (a second or two), loaded with ctypes and run on torch's thread count, one range of pairs per
thread (ctypes lets go of the GIL during the call). Used for scoring without gradients on the CPU in
float32; everywhere else, and where no compiler is found or the build fails, the scorer runs in
torch: decided once per process and said in one line. ``MLASM_FUSED=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from mlasm.paths import cache_dir

SOURCE = Path(__file__).resolve().parent / "kernels" / "pair_levels.c"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")
ARGUMENTS = ("similarities", "region mask", "region norms", "region Gram matrices", "caption lengths",
             "word norms", "word Gram matrices")
PAIRS_PER_THREAD = 256
# the loop's float32 sums run key after key: over thousands of regions they drift by about 1e-5 (10,000
# regions: 1.2e-5 from torch), so images with more regions than this keep torch's scorer
MAX_REGIONS = 512  # fewer pairs than this a thread cost more to start than they save


class LocalTerms(NamedTuple):
    t2i: Tensor                        # (n, m)
    i2t: Tensor                        # (n, m)
    region_weights: Optional[Tensor]   # (n, m, R) mean over the words of alpha_rl
    word_weights: Optional[Tensor]     # (n, m, L) mean over the regions of beta_rl


def _machine() -> str:
    """What -march=native compiles for: a cache folder shared by two machines must not mix their builds."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        built = Path(work) / target.name
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(built, target)  # whole or not at all, also with two processes building at once


_STATUS = ["not decided yet"]


def status() -> str:
    """One line: which scorer this process uses and why (benchmarks print it)."""
    library()
    return _STATUS[0]


@functools.cache
def library() -> Optional[ctypes.CDLL]:
    """The compiled loop, or None (with one printed line saying why) to score in torch."""
    if os.environ.get("MLASM_FUSED", "1") == "0":
        _STATUS[0] = "torch (MLASM_FUSED=0)"
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        _STATUS[0] = "torch (no C compiler found)"
        print("mlasm: no C compiler (cc) found: scoring in torch, without the fused pair loop", flush=True)
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS, _machine())).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"pair_levels-{key}.so"
    try:
        started = time.perf_counter()
        built = not target.is_file()
        if built:
            _build(compiler, target)
        loaded = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        detail = (getattr(error, "stderr", None) or str(error)).strip()
        why = f"the fused pair loop did not build: {detail.splitlines()[-1][:160] if detail else error}"
        _STATUS[0] = f"torch ({why})"
        print(f"mlasm: {why}; scoring in torch", flush=True)
        return None
    _STATUS[0] = (f"fused pair loop ({compiler}, " + (f"built in {time.perf_counter() - started:.1f} s" if built
                  else "built earlier") + f" into {target.parent})")
    function = loaded.pair_levels
    pointer, int64, single = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    function.argtypes = [pointer] * 7 + [int64] * 4 + [single, single, ctypes.c_int, single, single,
                                                        int64, int64] + [pointer] * 4
    function.restype = ctypes.c_int
    return loaded


@functools.lru_cache(maxsize=1)
def _workers(threads: int) -> ThreadPoolExecutor:
    """Threads kept for the whole process: a block is scored in milliseconds, too often to start them each time."""
    return ThreadPoolExecutor(threads, thread_name_prefix="mlasm-fused")


def usable(vectors: Tensor, region_gram: Optional[Tensor]) -> bool:
    """Whether a block of these region vectors can take the fused loop: CPU, float32, no gradients, the
    images' Gram matrices kept (many regions build the attended vectors). Under bfloat16 autocast the
    similarities are not float32 either: the caller checks them."""
    return (vectors.device.type == "cpu" and vectors.dtype == torch.float32 and region_gram is not None
            and vectors.shape[1] <= MAX_REGIONS and not torch.is_grad_enabled() and library() is not None)


def local_terms(sim: Tensor, regions, words, config, slope: float) -> LocalTerms:
    """t2i and i2t of every pair of a block, from its similarities ``sim`` (n, R, m, L) and the block's
    per-item terms (mlasm.model's _RegionTerms, _WordTerms), and, for a model with the semantic level,
    the mean attention weights it reads."""
    n, n_regions, m, n_words = sim.shape
    inputs = [t.contiguous() for t in (sim, regions.mask.to(torch.uint8), regions.norms, regions.gram,
                                       words.mask.sum(1, dtype=torch.int32), words.norms, words.gram)]
    expected = [((n, n_regions, m, n_words), torch.float32), ((n, n_regions), torch.uint8),
                ((n, n_regions), torch.float32), ((n, n_regions, n_regions), torch.float32), ((m,), torch.int32),
                ((m, n_words), torch.float32), ((m, n_words, n_words), torch.float32)]
    for name, tensor, (shape, dtype) in zip(ARGUMENTS, inputs, expected):  # the C loop trusts them: checked here
        if tuple(tensor.shape) != shape or tensor.dtype != dtype or tensor.device.type != "cpu":
            raise ValueError(f"fused pair loop: {name} is {tuple(tensor.shape)} {tensor.dtype} on "
                             f"{tensor.device}, expected {shape} {dtype} on the CPU")
    weights = config.uses_global_level
    outputs = [sim.new_empty(n, m), sim.new_empty(n, m), sim.new_empty(n, m, n_regions) if weights else None,
               sim.new_empty(n, m, n_words) if weights else None]
    addresses = [t.data_ptr() for t in inputs] + [n, n_regions, m, n_words, config.lambda_t2i, config.lambda_i2t,
                                                  int(config.pooling == "lse"), config.lambda_lse, slope]
    results = [None if t is None else t.data_ptr() for t in outputs]
    function = library().pair_levels

    def run(first: int, last: int) -> int:
        return function(*addresses, first, last, *results)

    pairs = n * m
    threads = max(1, min(torch.get_num_threads(), pairs // PAIRS_PER_THREAD))
    cuts = [pairs * k // threads for k in range(threads + 1)]
    if threads == 1:
        codes = [run(0, pairs)]
    else:
        codes = list(_workers(threads).map(run, cuts[:-1], cuts[1:]))
    if any(codes):
        raise MemoryError("the fused pair loop could not allocate its scratch memory")
    return LocalTerms(*outputs)
