"""SCAN checkpoints (kuanghuei/SCAN's train.py layout) read safely: both torch formats, argparse.Namespace
allowed and nothing else, a pickle that would run code refused, options not reproduced refused by name."""
from __future__ import annotations

import argparse
import io
import pickle
import sys

import pytest
import torch

from mlasm.checkpoint import CheckpointError, LEGACY_MAGIC, load_checkpoint, load_model, save_checkpoint
from mlasm.config import MLASMConfig
from mlasm.data.vocab import SPECIAL_TOKENS, Vocabulary
from mlasm.model import MLASM
from mlasm.scan_model import SCANConfig, SCANModel, random_scan_model, write_scan_checkpoint

WORDS = list(SPECIAL_TOKENS) + ["a", "red", "square", "circle", "blue", "on", "the", "left"]
TINY = dict(cross_attn="t2i", agg_func="LogSumExp", raw_feature_norm="clipped_l2norm", precomp_enc_type="basic",
            bi_gru=True, no_imgnorm=False, no_txtnorm=False, img_dim=6, embed_size=5, word_dim=4, num_layers=1,
            vocab_size=len(WORDS), lambda_softmax=9.0, lambda_lse=6.0)


@pytest.fixture()
def vocab_file(tmp_path):
    path = tmp_path / "f30k_precomp_vocab.json"
    Vocabulary(WORDS).save(path, file_format="scan")
    return path


def _checkpoint(tmp_path, legacy: bool, **options) -> tuple:
    model = random_scan_model(SCANConfig(**{**TINY, **options}), seed=3)
    path = tmp_path / ("legacy.pth.tar" if legacy else "zip.pth.tar")
    write_scan_checkpoint(path, model, legacy=legacy, epoch=7, eiters=1234, best_rsum=401.5)
    return path, model


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-format", "zip-format"])
def test_a_scan_checkpoint_opens_in_either_torch_format(tmp_path, vocab_file, legacy):
    path, written = _checkpoint(tmp_path, legacy)
    head = path.read_bytes()[:16]
    assert head.startswith(LEGACY_MAGIC) if legacy else head.startswith(b"PK\x03\x04")
    model, vocab, state = load_model(path, "cpu", vocab=vocab_file)
    assert isinstance(model, SCANModel) and not model.training
    assert state["epoch"] == 7 and state["Eiters"] == 1234 and state["best_rsum"] == 401.5
    assert isinstance(state["opt"], argparse.Namespace) and state["opt"].lambda_softmax == 9.0
    for part, expected in zip(model.scan_state_dict(), written.scan_state_dict()):
        assert part.keys() == expected.keys()
        for key in part:
            assert torch.equal(part[key], expected[key]), key
    # captions read as SCAN's data loader reads them: <start> words <end>
    assert vocab.encode("A red square.").tokens == ["<start>", "a", "red", "square", ".", "<end>"]
    assert model.levels == ("t2i", "final")


def test_the_namespace_is_allowed_only_while_loading(tmp_path, vocab_file):
    path, _ = _checkpoint(tmp_path, legacy=True)
    load_model(path, "cpu", vocab=vocab_file)
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


class _CreatesAFile:
    """Unpickled, this would call open(path, "w"): a file appears. weights_only must refuse it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _legacy_file_with(payload) -> bytes:
    """torch's legacy layout (magic number, protocol version, system info, then the object), by hand."""
    f = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                  "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, f, protocol=2)
    pickle.dump(payload, f, protocol=2)
    return f.getvalue()


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-format", "zip-format"])
def test_a_pickle_that_would_create_a_file_is_refused_and_the_file_never_appears(tmp_path, vocab_file, legacy):
    target = tmp_path / "created-by-the-pickle"
    payload = {"model": [{}, {}], "opt": argparse.Namespace(**TINY), "epoch": _CreatesAFile(target)}
    path = tmp_path / "model_best.pth.tar"
    if legacy:
        path.write_bytes(_legacy_file_with(payload))
        assert path.read_bytes().startswith(LEGACY_MAGIC)  # it passes the format check: torch's unpickler refuses
    else:
        torch.save(payload, path)
    for load in (lambda: load_model(path, "cpu", vocab=vocab_file), lambda: load_checkpoint(path)):
        with pytest.raises(CheckpointError) as refused:
            load()
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{path}: not a readable checkpoint (its pickle asks for more than tensors")
        assert "open" in message  # what it asked for
        assert not target.exists()


def test_types_beyond_tensors_numbers_strings_lists_dicts_and_namespace_are_refused(tmp_path, vocab_file):
    path, model = _checkpoint(tmp_path, legacy=False)
    state = torch.load(path, weights_only=False)
    state["opt"].img_size = torch.Size([3, 4])  # torch's own allowlist would let this through
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"the checkpoint\['opt'\]\['img_size'\] is a torch.Size; a "
                                              r"checkpoint holds only tensors"):
        load_model(path, "cpu", vocab=vocab_file)


def test_an_mlasm_checkpoint_with_optimiser_and_scheduler_is_plain(tmp_path):
    config = MLASMConfig.cpu(region_dim=6, global_dim=6, vocab_size=len(WORDS), embed_size=8, word_dim=4)
    model = MLASM(config)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 3)
    optimizer.zero_grad()
    model.word_embedding.weight.sum().backward()
    optimizer.step()
    scheduler.step()
    save_checkpoint(tmp_path / "last.pt", model, Vocabulary(WORDS), {"epoch": 1}, optimizer, scheduler)
    loaded, vocab, state = load_model(tmp_path / "last.pt", "cpu")
    assert type(loaded) is MLASM and vocab.words == WORDS
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    other = tmp_path / "other_vocab.json"
    Vocabulary(WORDS[:-1] + ["other"]).save(other, file_format="scan")  # SCAN's, for SCAN checkpoints beside it
    assert load_model(tmp_path / "last.pt", "cpu", vocab=other)[1].words == WORDS  # it reads with its own


@pytest.mark.parametrize("option, value", [
    ("cross_attn", "both"), ("agg_func", "Median"), ("raw_feature_norm", "batchnorm"),
    ("precomp_enc_type", "backbone"), ("bi_gru", "yes"), ("no_imgnorm", 1), ("num_layers", 0),
    ("embed_size", 2.5), ("lambda_softmax", 0.0), ("lambda_softmax", float("nan")), ("lambda_lse", -1.0)])
def test_an_option_value_not_reproduced_is_refused_naming_option_and_value(tmp_path, vocab_file, option, value):
    path, _ = _checkpoint(tmp_path, legacy=True)
    state = torch.load(path, weights_only=False)
    setattr(state["opt"], option, value)
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as refused:
        load_model(path, "cpu", vocab=vocab_file)
    assert str(refused.value).startswith(f"{path}: SCAN option {option}={value!r} cannot be reproduced here; expected")


def test_lambda_lse_is_not_read_when_the_pooling_is_not_logsumexp(tmp_path, vocab_file):
    path, _ = _checkpoint(tmp_path, legacy=True, agg_func="Mean", lambda_lse=0.0)
    assert load_model(path, "cpu", vocab=vocab_file)[0].config.agg_func == "Mean"


def test_a_missing_option_or_vocabulary_is_named(tmp_path, vocab_file):
    path, _ = _checkpoint(tmp_path, legacy=False)
    with pytest.raises(CheckpointError, match="a SCAN checkpoint; SCAN keeps its vocabulary apart: give it with "
                                              "--vocab"):
        load_model(path, "cpu")
    with pytest.raises(CheckpointError, match="a SCAN checkpoint, not an mlasm one"):
        load_checkpoint(path)
    small = tmp_path / "small_vocab.json"
    Vocabulary(WORDS[:-1]).save(small, file_format="scan")
    with pytest.raises(CheckpointError, match=f"{small}: holds 11 words, but {path} was trained with vocab_size=12"):
        load_model(path, "cpu", vocab=small)
    state = torch.load(path, weights_only=False)
    del state["opt"].raw_feature_norm
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="the SCAN options lack raw_feature_norm"):
        load_model(path, "cpu", vocab=vocab_file)


def test_weights_of_another_shape_are_refused_in_one_line(tmp_path, vocab_file):
    path, _ = _checkpoint(tmp_path, legacy=False)
    state = torch.load(path, weights_only=False)
    state["opt"].embed_size = 7
    torch.save(state, path)
    with pytest.raises(CheckpointError) as refused:
        load_model(path, "cpu", vocab=vocab_file)
    assert str(refused.value).startswith(f"{path}: inconsistent SCAN checkpoint (RuntimeError: Error(s) in loading")
    assert "\n" not in str(refused.value)


# ------------------------------------------------------------------ a file as SCAN's time wrote it

class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: str as SHORT_BINSTRING (Python 2's str), not BINUNICODE."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, text):
        data = text.encode("ascii")
        assert len(data) < 256
        self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        self.memoize(text)

    dispatch[str] = save_py2_str


class _Py2OrderedDict:
    """collections.OrderedDict as Python 2 reduced it: the class called with a list of [key, value] pairs."""

    def __init__(self, items):
        self.items = items

    def __reduce__(self):
        import collections
        return (collections.OrderedDict, ([[k, v] for k, v in self.items],))


class _Torch03Storage:
    """A tensor's storage, pickled as a persistent id (its data follow the pickles)."""

    def __init__(self, tensor):
        self.tensor = tensor.contiguous().float()


class _Torch03Tensor:
    """A tensor as torch 0.3 reduced it: torch._utils._rebuild_tensor(storage, offset, size, stride)."""

    def __init__(self, storage: _Torch03Storage):
        self.storage = storage

    def __reduce__(self):
        tensor = self.storage.tensor
        return (torch._utils._rebuild_tensor, (self.storage, 0, tuple(tensor.shape), tuple(tensor.stride())))


def _torch_0_3_file(state: dict) -> bytes:
    """torch 0.3's legacy serialisation written by hand: magic number, protocol version, system info, the object
    (storages as persistent ids), the storage keys, then each storage's element count and raw bytes."""
    storages = []

    def persistent_id(obj):
        if isinstance(obj, _Torch03Storage):
            return ("storage", torch.FloatStorage, str(storages.index(obj)), "cpu", obj.tensor.numel(), None)
        return None

    def wrap(value):
        if torch.is_tensor(value):
            storages.append(_Torch03Storage(value))
            return _Torch03Tensor(storages[-1])
        if isinstance(value, dict):
            return _Py2OrderedDict([(k, wrap(v)) for k, v in value.items()])
        if isinstance(value, list):
            return [wrap(v) for v in value]
        return value

    f = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                  "type_sizes": {"short": 2, "int": 4, "long": 8}}):
        _Python2Pickler(f, protocol=2).dump(header)
    body = {"model": wrap(state["model"]), "opt": state["opt"], "epoch": state["epoch"], "Eiters": state["Eiters"],
            "best_rsum": state["best_rsum"]}
    pickler = _Python2Pickler(f, protocol=2)
    pickler.persistent_id = persistent_id
    pickler.dump(body)
    _Python2Pickler(f, protocol=2).dump([str(i) for i in range(len(storages))])
    for storage in storages:
        f.write(storage.tensor.numel().to_bytes(8, "little") + storage.tensor.numpy().tobytes())
    return f.getvalue()


def test_a_checkpoint_as_torch_0_3_under_python_2_wrote_it_opens(tmp_path, vocab_file):
    """SCAN's released checkpoints: Python 2.7, torch 0.3, legacy format, OrderedDicts of Python 2."""
    path, written = _checkpoint(tmp_path, legacy=True)
    state = torch.load(path, weights_only=False)
    old = tmp_path / "model_best.pth.tar"
    old.write_bytes(_torch_0_3_file(state))
    assert b"torch._utils\n_rebuild_tensor\n" in old.read_bytes() and b"_rebuild_tensor_v2" not in old.read_bytes()
    assert pickle.SHORT_BINSTRING + bytes([len("cross_attn")]) + b"cross_attn" in old.read_bytes()
    model, _, loaded = load_model(old, "cpu", vocab=vocab_file)
    assert loaded["opt"].cross_attn == "t2i" and loaded["epoch"] == 7
    for part, expected in zip(model.scan_state_dict(), written.scan_state_dict()):
        for key in expected:
            assert torch.equal(part[key], expected[key].float()), key
