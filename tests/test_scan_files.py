"""SCAN's files and conventions: large memory-mapped splits, lazy NaN checks, SCAN's vocabulary in
training, <start>/<end> tokens read alike by training, evaluation and the widgets."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cli_support import TINY, TINY_OPTIONS, answer
from mlasm.cli import main
from mlasm.config import MLASMConfig
from mlasm.data.dataset import caption_tensors
from mlasm.data.precomp import read_split
from mlasm.evaluate import evaluate_model
from mlasm.train import train


pytestmark = pytest.mark.usefixtures("one_thread")  # splits, data_folder: tests/conftest.py


# ----------------------------------------------------------------------------- bounded memory

# Run in a fresh process, so that its peak memory (ru_maxrss) is this test's alone.
OPEN_A_LARGE_SPLIT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from mlasm.data.dataset import image_tensors
    from mlasm.data.precomp import read_split

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before = peak_mb()
    split = read_split(sys.argv[1], "train")
    opened = peak_mb()
    regions, mask, glob = image_tensors(split, [5, 7])
    print(json.dumps({"before": before, "opened": opened, "batch": peak_mb(), "n_images": split.n_images,
                      "region_5": float(regions[0, 0, 0]), "global_5": float(glob[0, 0]),
                      "global_dim": split.global_dim}))
""")


def test_a_large_sparse_split_opens_without_reading_its_features(tmp_path):
    """8,000 images x 36 x 2,048 float32 (2.4 GB, a sparse file: no disk space used). Reading every
    feature at open, as the NaN check once did, raises the peak memory of the process by the size
    of the file (its pages are mapped in); opening lazily raises it by the captions alone."""
    n, regions, dim = 8000, 36, 2048
    features = np.lib.format.open_memmap(tmp_path / "train_ims.npy", mode="w+", dtype=np.float32,
                                         shape=(n, regions, dim))
    features[5] = 2.0        # two images with values, to see a batch read the right rows
    features[n - 1] = np.nan  # never read: opening must not find it
    del features
    (tmp_path / "train_caps.txt").write_text("".join(f"caption {k} of a picture\n" for k in range(5 * n)))
    file_bytes = n * regions * dim * 4
    assert (tmp_path / "train_ims.npy").stat().st_blocks * 512 < file_bytes / 100  # sparse indeed
    result = subprocess.run([sys.executable, "-c", OPEN_A_LARGE_SPLIT, str(tmp_path)], capture_output=True,
                            text=True, check=True)
    measured = json.loads(result.stdout)
    assert measured["n_images"] == n and measured["global_dim"] == dim
    assert measured["region_5"] == 2.0 and measured["global_5"] == 2.0
    grown_mb = measured["batch"] - measured["before"]
    assert grown_mb < 200, f"opening and reading a batch raised the peak memory by {grown_mb:.0f} MB " \
                           f"(the features are {file_bytes / 2**20:.0f} MB)"


def test_nan_features_stop_check_and_training_naming_file_and_image(data_folder, tmp_path, capsys):
    folder = tmp_path / "data"
    shutil.copytree(data_folder, folder)
    regions = np.load(folder / "train_ims.npy")
    regions[17, 2, 5] = np.nan
    np.save(folder / "train_ims.npy", regions)
    expected = f"{folder / 'train_ims.npy'}: image 17 has NaN or infinite region features"

    read_split(folder, "train")  # opens: the features are read when used
    code, line, _ = answer(capsys, ["check", str(folder)])
    assert code == 2 and line == f"mlasm check: error: {expected}"
    code, line, _ = answer(capsys, ["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1",
                                    *TINY_OPTIONS])
    assert code == 2 and line == f"mlasm train: error: {expected}"

    code, line, out = answer(capsys, ["check", str(data_folder)])
    assert code == 0 and line == ""
    assert "train: 48 images of 12 x 167 region features and 240 captions: every feature is finite" in out
    assert "dev: 16 images" in out


# ----------------------------------------------------------------------------- SCAN's vocabulary

def _scan_vocab_from(captions, path, threshold=1):
    """SCAN's vocab.py, re-done without mlasm: NLTK tokens of the lower-cased captions, the special
    tokens first, then the words in the order they first appear."""
    from nltk.tokenize import NLTKWordTokenizer

    tokenizer = NLTKWordTokenizer()
    counts = {}
    for caption in captions:
        for token in tokenizer.tokenize(caption.lower()):
            counts[token] = counts.get(token, 0) + 1
    words = ["<pad>", "<start>", "<end>", "<unk>"] + [w for w, n in counts.items() if n >= threshold]
    path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)},
                                "idx2word": {str(i): w for i, w in enumerate(words)}, "idx": len(words)}))
    return words


def test_train_with_scans_vocabulary_file(splits, data_folder, tmp_path, capsys):
    words = _scan_vocab_from(splits["train"].captions + splits["dev"].captions, tmp_path / "vocab.json")
    out = tmp_path / "run"
    code, line, printed = answer(capsys, ["train", "--data", str(data_folder), "--out", str(out), "--epochs", "1",
                                          "--vocab", str(tmp_path / "vocab.json"), *TINY_OPTIONS])
    assert code == 0, line
    assert json.loads((out / "vocab.json").read_text())["words"] == words  # SCAN's ids, kept
    assert "0.0% of the training captions' tokens read as <unk>" in printed
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(words)

    code, line, _ = answer(capsys, ["train", "--data", str(data_folder), "--out", str(tmp_path / "run2"),
                                    "--vocab", str(tmp_path / "vocab.json"), "--min-word-count", "2"])
    assert code == 2 and "argument --min-word-count: not allowed with argument --vocab" in line
    (tmp_path / "glove.json").write_text(json.dumps({"dog": [0.1]}))
    code, line, _ = answer(capsys, ["train", "--data", str(data_folder), "--out", str(tmp_path / "run3"),
                                    "--vocab", str(tmp_path / "glove.json")])
    assert code == 2 and line.startswith(f"mlasm train: error: {tmp_path / 'glove.json'}: not a vocabulary file")


# ----------------------------------------------------------------------------- <start> and <end>

def test_the_paper_preset_adds_start_and_end_and_warns_without_glove(data_folder, tmp_path, capsys):
    assert MLASMConfig.paper().start_end_tokens and not MLASMConfig.cpu().start_end_tokens
    assert not MLASMConfig.from_dict({}).start_end_tokens  # a checkpoint from before the setting
    out = tmp_path / "run"
    command = ["train", "--data", str(data_folder), "--out", str(out), "--preset", "paper", "--epochs", "1",
               *TINY_OPTIONS]
    code = main(command)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == ["mlasm train: warning: --preset paper without --glove: the paper initialises the word "
                        "embedding from GloVe 300-d, these words start from random vectors (give --glove "
                        "glove.6B.300d.txt or another 300-d GloVe file)"]
    assert json.loads((out / "config.json").read_text())["start_end_tokens"] is True


def test_start_and_end_reach_training_validation_and_the_widgets(splits, tmp_path):
    from widgets.attention import AttentionExplorer
    from widgets.selection import Selection
    from mlasm.session import WorkbenchSession
    from mlasm.checkpoint import load_model

    config = MLASMConfig.cpu(**{**TINY, "epochs": 1, "start_end_tokens": True})
    summary = train(config, splits["train"], splits["dev"], tmp_path / "run", progress=False)
    model, vocab, _ = load_model(summary["best"], "cpu")
    assert vocab.boundaries  # the checkpoint's vocabulary reads captions as training did
    bare = vocab.with_boundaries(False)
    dev = splits["dev"]
    tokens, lengths = caption_tensors(vocab, dev.captions[:2])
    assert tokens[:, 0].tolist() == [1, 1] and tokens[0, lengths[0] - 1] == 2  # <start> ... <end>
    with_boundaries = evaluate_model(model, dev, vocab, progress=False)
    assert with_boundaries["rsum"] == pytest.approx(summary["best_rsum"])  # validation read them too
    without = evaluate_model(model, dev, bare, progress=False)
    assert without["rsum"] != pytest.approx(summary["best_rsum"])  # so the option matters

    session = WorkbenchSession(model, vocab, dev)
    caption = 0
    words = session.tokens(caption)
    assert words[0] == "<start>" and words[-1] == "<end>" and words[1:-1] == bare.encode(dev.captions[0]).tokens
    image = int(dev.caption_to_image[caption])
    explorer = AttentionExplorer(session, Selection(image=image, caption=caption))
    assert explorer.words == words and explorer.explanation.t2i_attention.shape[0] == len(words)
    assert list(explorer.heatmap.layout.yaxis.ticktext)[0] == "&lt;start&gt;"  # plotly would drop a bare tag
    assert "&lt;start&gt;" in explorer.word_row.value  # the word row shows it as a word
    grounded = dev.grounding[caption][0][0]
    assert explorer.word == grounded + 1  # the first grounded word, one row down behind <start>
    assert words[explorer.word] == bare.encode(dev.captions[caption]).tokens[grounded]
    # the pointing game reads the row of each grounded word, one below <start>: counted by hand here
    from mlasm.encoding import encode_split
    from mlasm.evaluate import grounding_accuracy
    img, cap = encode_split(model, dev, vocab)
    hits = words_counted = 0
    for c, grounded_words in enumerate(dev.grounding):
        if not grounded_words:
            continue
        explanation = model.explain(img, cap, int(dev.caption_to_image[c]), c)
        for position, regions in grounded_words:
            top = explanation.region_indices[explanation.t2i_attention[position + 1].argmax()]
            hits += int(top in set(regions))
            words_counted += 1
    pointing = grounding_accuracy(model, dev, vocab, img, cap)
    assert (pointing["hits"], pointing["words"]) == (hits, words_counted) and words_counted > 0

    typed = session.encode_text("a red square")
    assert typed.tokens == ["<start>", "a", "red", "square", "<end>"]
    with pytest.raises(ValueError, match="has no words"):
        session.encode_text("   ")


def test_evaluating_a_checkpoint_reads_captions_as_training_did(splits, tmp_path):
    from mlasm.evaluate import evaluate_checkpoints

    config = MLASMConfig.cpu(**{**TINY, "epochs": 1, "start_end_tokens": True})
    summary = train(config, splits["train"], splits["dev"], tmp_path / "run", progress=False)
    result = evaluate_checkpoints([summary["best"]], splits["dev"], progress=False)
    assert result["rsum"] == pytest.approx(summary["best_rsum"])
