"""The all-pairs scorer's local and semantic levels fused into C loops over pairs (mlasm/kernels/pair_levels.c).

torch runs the two attentions of a block of pairs as about twenty passes over the block's whole
similarity tensor, each bound by memory; the loop reads each pair's (R, L) tile once and does every
step in the caches. It is compiled once per machine with the system C compiler into the cache
folder (a second or two), loaded with ctypes and run on torch's thread count, one range of pairs per
thread: with OpenMP on torch's own threads (pair_levels.c says why), else on a pool of Python threads
(ctypes lets go of the GIL during the call). Used for scoring without gradients on the CPU in
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
OPENMP = ("-fopenmp",)  # see pair_levels.c's pair_levels: torch's own OpenMP threads run the loop
PAIRS_PER_THREAD = 256  # fewer pairs than this a thread cost more to start than they save
# the loop's float32 sums run key after key: over thousands of regions they drift by about 1e-5 (10,000
# regions: 1.2e-5 from torch), so images with more regions than this keep torch's scorer
MAX_REGIONS = 512


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


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        built = Path(work) / target.name
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), "-lm"], check=True,
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
    started = time.perf_counter()
    for flags in (FLAGS + OPENMP, FLAGS):  # a compiler without OpenMP: the threads are Python's
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *flags, _machine())).encode()).hexdigest()[:16]
        target = cache_dir() / "kernels" / f"pair_levels-{key}.so"
        try:
            built = not target.is_file()
            if built:
                _build(compiler, flags, target)
            loaded = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.SubprocessError) as error:
            failure = error
    else:
        detail = (getattr(failure, "stderr", None) or str(failure)).strip()
        why = f"the fused pair loop did not build: {detail.splitlines()[-1][:160] if detail else failure}"
        _STATUS[0] = f"torch ({why})"
        print(f"mlasm: {why}; scoring in torch", flush=True)
        return None
    _STATUS[0] = (f"fused pair loop ({compiler}, " + ("OpenMP, " if loaded.uses_openmp() else "no OpenMP, ")
                  + (f"built in {time.perf_counter() - started:.1f} s" if built else "built earlier")
                  + f" into {target.parent})")
    function = loaded.pair_levels
    pointer, int64, single = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    function.argtypes = [pointer] * 7 + [int64] * 4 + [single, single, ctypes.c_int, single, single,
                                                        int64, int64, ctypes.c_int] + [pointer] * 4
    function.restype = ctypes.c_int
    loaded.semantic_levels.argtypes = [pointer] * 6 + [int64] * 6 + [ctypes.c_int, pointer]
    loaded.semantic_levels.restype = ctypes.c_int
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


def _checked(inputs: dict[str, tuple[Tensor, tuple, torch.dtype]]) -> list[Tensor]:
    """Each input contiguous, of the shape and dtype the C code reads: it trusts them, so they are checked here."""
    checked = []
    for name, (tensor, shape, dtype) in inputs.items():
        tensor = tensor.contiguous()
        if tuple(tensor.shape) != shape or tensor.dtype != dtype or tensor.device.type != "cpu":
            raise ValueError(f"fused pair loop: {name} is {tuple(tensor.shape)} {tensor.dtype} on "
                             f"{tensor.device}, expected {shape} {dtype} on the CPU")
        checked.append(tensor)
    return checked


def _in_parallel(name: str, run, units: int, min_units: int) -> None:
    """``run(first, last, threads)`` over units 0 .. units - 1 on torch's thread count (at least
    ``min_units`` a thread): one call where the library has OpenMP, else one range per pooled thread.
    ``name``: its row in torch.profiler's tables (benchmarks/profile_step.py)."""
    threads = max(1, min(torch.get_num_threads(), units // min_units))
    with torch.profiler.record_function(name):
        if threads == 1 or library().uses_openmp():
            codes = [run(0, units, threads)]
        else:
            cuts = [units * k // threads for k in range(threads + 1)]
            codes = list(_workers(threads).map(run, cuts[:-1], cuts[1:], [1] * threads))
    if any(codes):
        raise MemoryError("the fused pair loop could not allocate its scratch memory")


def local_terms(sim: Tensor, regions, words, config, slope: float) -> LocalTerms:
    """t2i and i2t of every pair of a block, from its similarities ``sim`` (n, R, m, L) and the block's
    per-item terms (mlasm.model's _RegionTerms, _WordTerms), and, for a model with the semantic level,
    the mean attention weights it reads."""
    n, n_regions, m, n_words = sim.shape
    f32 = torch.float32
    inputs = _checked({"similarities": (sim, (n, n_regions, m, n_words), f32),
                       "region mask": (regions.mask.to(torch.uint8), (n, n_regions), torch.uint8),
                       "region norms": (regions.norms, (n, n_regions), f32),
                       "region Gram matrices": (regions.gram, (n, n_regions, n_regions), f32),
                       "caption lengths": (words.mask.sum(1, dtype=torch.int32), (m,), torch.int32),
                       "word norms": (words.norms, (m, n_words), f32),
                       "word Gram matrices": (words.gram, (m, n_words, n_words), f32)})
    weights = config.uses_global_level
    outputs = [sim.new_empty(n, m), sim.new_empty(n, m), sim.new_empty(n, m, n_regions) if weights else None,
               sim.new_empty(n, m, n_words) if weights else None]
    addresses = [t.data_ptr() for t in inputs] + [n, n_regions, m, n_words, config.lambda_t2i, config.lambda_i2t,
                                                  int(config.pooling == "lse"), config.lambda_lse, slope]
    results = [None if t is None else t.data_ptr() for t in outputs]
    _in_parallel("mlasm::fused_local_level",
                 lambda first, last, threads: library().pair_levels(*addresses, first, last, threads, *results),
                 n * m, PAIRS_PER_THREAD)
    return LocalTerms(*outputs)


def semantic_scores(regions, words, region_weights: Tensor, word_weights: Tensor) -> Tensor:
    """The semantic level's score (n, m) of every pair of a block (mlasm.model.MLASM._semantic_level
    without its gate), from the local level's mean weights: the text sides by one batched product,
    the rest in one pass that stores nothing of size d per pair (pair_levels.c's semantic_range)."""
    n, n_regions, d = regions.context_rows.shape
    m, n_words = words.mask.shape
    f32 = torch.float32
    word_weights, text_rows = _checked({"word weights": (word_weights, (n, m, n_words), f32),
                                        "text context rows": (words.context_rows, (m, n_words, d), f32)})
    # b = sum_l wbar_l (W_t u_l + b_t) of every pair, caption-major: (m, n, L) @ (m, L, d)
    text_sides = torch.bmm(word_weights.transpose(0, 1), text_rows)
    inputs = _checked({"region weights": (region_weights, (n, m, n_regions), f32),
                       "image context rows": (regions.context_rows, (n, n_regions, d), f32),
                       "gate rows": (regions.gate_rows, (n, n_regions, d), f32),
                       "global vectors": (regions.glob, (n, d), f32),
                       "text sides": (text_sides, (m, n, d), f32),
                       "region mask": (regions.mask.to(torch.uint8), (n, n_regions), torch.uint8)})
    scores = region_weights.new_empty(n, m)
    addresses = [t.data_ptr() for t in inputs] + [n, n_regions, m, d]
    _in_parallel("mlasm::fused_semantic_level",
                 lambda first, last, threads: library().semantic_levels(*addresses, first, last, threads,
                                                                        scores.data_ptr()),
                 n, max(1, PAIRS_PER_THREAD // max(m, 1)))
    return scores
