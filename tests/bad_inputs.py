"""Every bad input and fault the tests cover: what it is, how it is given, what the user sees.

The tests take their cases from this table (tests/test_reliability.py, tests/test_resume.py);
``test_every_case_in_the_table_has_a_test`` checks that each case is a parameter of some
test, and ``test_the_documented_table_is_this_one`` that docs/bad-inputs.md is this table as
``python tests/bad_inputs.py`` writes it. Add a case here, give it to a test, regenerate.

``shows`` is what the one line a user reads contains; the tests assert it, with the
upper-case placeholders (RUN, OUT, FILE, ...) replaced by the real paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"


@dataclass(frozen=True)
class Case:
    key: str
    section: str
    input: str    # the bad input or the fault, in words
    command: str  # how it reaches mlasm
    shows: str    # what the user sees: the one line (exit status 2 unless said otherwise), or the outcome

    def __str__(self) -> str:  # the pytest id
        return self.key

    def expected(self, **paths) -> str:
        """``shows`` with its placeholders (RUN, OUT, ...) replaced by real paths."""
        text = self.shows
        for name, value in paths.items():
            text = text.replace(name, str(value))
        return text


SECTIONS = {
    "values": "Option values, checked where they are parsed (nothing is read before)",
    "folders": "Output folders, checked before any work starts",
    "runs": "Run folders and training",
    "data": "Data, checkpoints and word vectors",
    "extract": "Extraction of one's own photos",
    "files": "Files written",
    "interrupts": "Interrupted training (Ctrl-C, SIGTERM), then `--resume`",
}

_TRAIN = "mlasm train"
_EVALUATE = "mlasm evaluate"
_EXTRACT = "mlasm extract"
_ARG = "{option}: expected {what}, got '{value}'"


def _value(key, command, option, value, what):
    return Case(key, "values", f"`{option} {value}`", command,
                f"argument {_ARG.format(option=option, what=what, value=value)}")


_CASES = [
    _value("train_checkpoint_every_0", _TRAIN, "--checkpoint-every", "0", "a whole number >= 1"),
    Case("train_device_gpu0", "values", "`--device gpu0`", _TRAIN,
         "argument --device: device 'gpu0': not a device name torch knows; expected cpu, cuda, cuda:N or mps"),
    Case("train_device_cpu1", "values", "`--device cpu1`", _TRAIN,
         "argument --device: device 'cpu1': not a device name torch knows; expected cpu, cuda, cuda:N or mps"),
    Case("train_device_absent_gpu", "values", "`--device cuda:99`", _TRAIN,
         "argument --device: device 'cuda:99': no such CUDA device here (this machine has"),
    _value("train_learning_rate_inf", _TRAIN, "--learning-rate", "inf", "a finite number"),
    _value("train_learning_rate_zero", _TRAIN, "--learning-rate", "0", "a finite number > 0"),
    _value("train_lambda_t2i_inf", _TRAIN, "--lambda-t2i", "inf", "a finite number"),
    _value("train_margin_nan", _TRAIN, "--margin", "nan", "a finite number"),
    _value("train_rho_above_one", _TRAIN, "--rho", "1.5", "a number from 0 to 1"),
    _value("train_batch_size_1", _TRAIN, "--batch-size", "1", "a whole number >= 2"),
    _value("train_epochs_zero", _TRAIN, "--epochs", "0", "a whole number >= 1"),
    _value("train_seed_negative", _TRAIN, "--seed", "-1", "a whole number >= 0"),
    _value("train_min_word_count_zero", _TRAIN, "--min-word-count", "0", "a whole number >= 1"),
    _value("train_level_weight_text", _TRAIN, "--level-weight", "heavy", "a number"),
    _value("evaluate_memory_budget_nan", _EVALUATE, "--memory-budget-mb", "nan", "a finite number"),
    Case("evaluate_device_gpu0", "values", "`--device gpu0`", _EVALUATE,
         "argument --device: device 'gpu0': not a device name torch knows"),
    _value("extract_threads_negative", _EXTRACT, "--threads", "-1", "a whole number >= 1"),
    _value("extract_limit_negative", _EXTRACT, "--limit", "-1", "a whole number >= 1"),
    _value("extract_short_side_zero", _EXTRACT, "--short-side", "0", "a whole number >= 32"),
    _value("extract_max_regions_zero", _EXTRACT, "--max-regions", "0", "a whole number >= 1"),
    _value("extract_score_threshold_above_one", _EXTRACT, "--score-threshold", "2", "a number from 0 to 1"),
    _value("demo_epochs_zero", "mlasm demo", "--epochs", "0", "a whole number >= 1"),

    Case("train_out_is_a_file", "folders", "`--out` names a file", _TRAIN, "--out OUT: is a file, expected a folder"),
    Case("evaluate_out_is_a_file", "folders", "`--out` names a file", _EVALUATE,
         "--out OUT: is a file, expected a folder"),
    Case("extract_out_is_a_file", "folders", "`--out` names a file", _EXTRACT,
         "--out OUT: is a file, expected a folder"),
    Case("train_out_under_a_file", "folders", "`--out FILE/run`, below a file", _TRAIN,
         "--out OUT: cannot create the folder (FILE is a file)"),
    Case("train_out_read_only", "folders", "`--out` on a read-only file system", _TRAIN,
         "--out OUT: cannot write files in it (Read-only file system)"),
    Case("evaluate_out_read_only", "folders", "`--out` on a read-only file system", _EVALUATE,
         "--out OUT: cannot write files in it (Read-only file system)"),
    Case("extract_out_read_only", "folders", "`--out` on a read-only file system", _EXTRACT,
         "--out OUT: cannot write files in it (Read-only file system)"),

    Case("train_into_a_finished_run", "runs", "training again into a folder that holds a run, without `--resume`",
         _TRAIN, "RUN: already holds a run (last.pt, best.pt, train_log.jsonl); continue it with --resume, "
                 "replace it with --overwrite, or choose another --out"),
    Case("train_overwrite", "runs", "the same, with `--overwrite`", _TRAIN,
         "exit 0: the old run's files are removed first, then a new run is trained"),
    Case("train_resume_and_overwrite", "runs", "`--resume --overwrite`", _TRAIN,
         "--resume and --overwrite exclude each other: continue the run, or replace it"),
    Case("train_resume_without_a_run", "runs", "`--resume` in an empty folder", _TRAIN,
         "RUN/last.pt: nothing to resume (no checkpoint in RUN)"),
    Case("train_resume_with_other_options", "runs", "`--resume --margin 0.3 --embed-size 48` (the run: 0.2, 32)",
         _TRAIN, "a resumed run keeps its settings, and these differ: --embed-size: 32 in the run, 48 given; "
                 "--margin: 0.2 in the run, 0.3 given. Only epochs may change"),
    Case("train_resume_with_other_seed", "runs", "`--resume --seed 5` (the run: 0)", _TRAIN,
         "--seed: 0 in the run, 5 given"),
    Case("train_resume_with_other_data", "runs", "`--resume --train-split dev` (other training data)", _TRAIN,
         "training data: 48 images and 240 captions in the run, 16 and 80 given"),
    Case("train_resume_with_other_min_word_count", "runs", "`--resume --min-word-count 1` (the run: 4)", _TRAIN,
         "given (--min-word-count builds another)"),
    Case("train_resume_more_epochs", "runs", "`--resume --epochs 2` after a 1-epoch run", _TRAIN,
         "exit 0, trains epoch 2 and prints: resumed with --epochs 2 (the run had 1); recorded in config.json"),
    Case("train_two_at_once", "runs", "a second training into a folder where one is running", _TRAIN,
         "another training is running in this folder (process PID"),
    Case("train_lock_of_a_killed_training", "runs", "the lock file of a training killed with kill -9", _TRAIN,
         "exit 0: the lock is the kernel's (flock) and ended with its process; the new training runs"),
    Case("train_min_word_count_huge", "runs", "`--min-word-count 100000`", _TRAIN,
         "--min-word-count 100000: no word occurs that often in the 240 training captions, so every word would "
         "read as <unk>; give a lower count (the default is 4)"),
    Case("train_diverges", "runs", "`--learning-rate 1e30` (finite, but the model diverges)", _TRAIN,
         "the model has diverged (lower the learning rate, or train without --amp); no checkpoint was written"),
    Case("train_nan_gradient", "runs", "a finite loss whose gradients are NaN", "train(...)",
         "NonFiniteScores: training gradient norm is nan at epoch 1, step 6; the model has diverged "
         "(lower the learning rate, or train without --amp); last.pt holds the last good state"),
    Case("train_disk_full", "runs", "the disk fills up while a checkpoint is written", _TRAIN,
         "RUN/last.pt: No space left on device (nothing was changed)"),
    Case("evaluate_disk_full", "runs", "the disk fills up while ranks.npz is written", _EVALUATE,
         "OUT/ranks.npz: No space left on device (nothing was changed)"),

    Case("evaluate_zero_byte_checkpoint", "data", "a checkpoint of 0 bytes", _EVALUATE,
         "FILE: not a readable checkpoint: the file is empty (0 bytes)"),
    Case("evaluate_text_checkpoint", "data", "a text file named .pt", _EVALUATE,
         "FILE: not a readable checkpoint: it is a text file ('hello'...), where a checkpoint written by "
         "torch.save is a zip archive"),
    Case("evaluate_checkpoint_is_a_folder", "data", "`--checkpoint` names a folder", _EVALUATE,
         "FILE: is a folder, expected a checkpoint file (.pt)"),
    Case("evaluate_pickle_that_runs_code", "data", "a checkpoint whose pickle would create a file (SCAN's "
         "layout, legacy format)", _EVALUATE,
         "FILE: not a readable checkpoint (its pickle asks for more than tensors, numbers, strings, lists, dicts "
         "and argparse.Namespace, and was not unpickled: Unsupported global: GLOBAL io.open"),
    Case("evaluate_scan_without_vocab", "data", "a SCAN checkpoint (`model_best.pth.tar`) without `--vocab`",
         _EVALUATE, "FILE: a SCAN checkpoint; SCAN keeps its vocabulary apart: give it with --vocab VOCAB.json "
                    "(e.g. vocab/f30k_precomp_vocab.json)"),
    Case("evaluate_scan_option_not_reproduced", "data", "a SCAN checkpoint with `raw_feature_norm='batchnorm'`",
         f"{_EVALUATE} --vocab VOCAB", "FILE: SCAN option raw_feature_norm='batchnorm' cannot be reproduced here; "
                                       "expected one of softmax, l2norm, clipped_l2norm, l1norm, clipped_l1norm, "
                                       "clipped, no_norm"),
    Case("evaluate_scan_vocab_of_another_size", "data", "`--vocab` of another size than the SCAN checkpoint's "
         "vocab_size", f"{_EVALUATE} --vocab VOCAB",
         "VOCAB: holds 11 words, but FILE was trained with vocab_size=12; give the vocabulary it was trained with"),
    Case("data_grounding_is_a_folder", "data", "`test_grounding.json` is a folder", "mlasm evaluate --data DIR",
         "FILE: is a folder, expected a grounding file"),
    Case("data_grounding_masked_region", "data", "grounding points at a padding region (mask False)",
         "mlasm evaluate --data DIR",
         "FILE: entry 15 (caption 'image 3 caption 0 .') points at region 2 of image 3, which is padding "
         "(its mask is False); a word can only name a real region"),
    Case("data_grounding_true_index", "data", "`true` used as a region index in grounding", "mlasm evaluate --data DIR",
         "FILE: entry 1 (caption 'image 0 caption 1 .') uses true or false as an index; token positions and "
         "region indices must be whole numbers"),
    Case("data_boxes_nan", "data", "a NaN in `test_boxes.npy`", "mlasm evaluate --data DIR",
         "FILE: image 1, region 2 has NaN or infinite box coordinates"),
    Case("data_empty_captions_with_cap2img", "data", "an empty `test_caps.txt` beside `test_cap2img.npy`",
         "mlasm evaluate --data DIR",
         "FILE: holds no caption (the file is empty); expected one caption per line"),
    Case("data_captions_per_image_string", "data", "`\"captions_per_image\": \"5\"` in meta.json",
         "mlasm evaluate --data DIR",
         "FILE: field \"captions_per_image\" must be a whole number >= 1 (or null when it varies), "
         "got \"5\" (a string)"),
    Case("train_glove_nan", "data", "a NaN in a GloVe file", f"{_TRAIN} --glove FILE",
         "FILE:2: the vector of 'square' holds nan; expected finite numbers"),
    Case("train_glove_latin1", "data", "a Latin-1 GloVe file", f"{_TRAIN} --glove FILE",
         "FILE:2: not UTF-8 text (invalid continuation byte); GloVe files are UTF-8"),

    Case("extract_16_bit_png", "extract", "a 16-bit greyscale PNG", "extract_dataset / mlasm extract",
         "the picture the models see is its grey (128 for 32768 of 65535), not white"),
    Case("extract_palette_with_transparency", "extract", "a palette PNG with a transparent colour",
         "extract_dataset / mlasm extract", "transparent pixels are white, the others their palette colour"),
    Case("extract_cmyk_jpeg", "extract", "a CMYK JPEG", "extract_dataset / mlasm extract",
         "converted to its RGB colours"),
    Case("extract_rgba_transparent", "extract", "an RGBA PNG with transparent pixels",
         "extract_dataset / mlasm extract", "transparent pixels are white (over white, as a viewer shows them)"),
    Case("extract_nan_boxes_from_a_detector", "extract", "a region proposer that returns a NaN box",
         "extract_dataset", "FILE: NanProposer.propose returned NaN or infinite box coordinates"),
    Case("extract_images_not_a_folder", "extract", "`--images` names no folder", _EXTRACT,
         "DIR: no such folder of pictures"),

    Case("stale_temporaries_of_a_killed_run", "files", "temporaries left by a run killed with kill -9",
         "mlasm train / evaluate", "removed at the next start; those of a running process are left alone"),
    Case("files_follow_the_umask", "files", "umask 022 or 002", "any write",
         "files are 0644 or 0664 (the umask), not 0600"),
    Case("sigterm_during_a_write", "files", "SIGTERM while a file is written", "any command",
         "exit 143 'terminated'; the temporary is removed and the previous file is intact"),
    Case("evaluate_pair_both_or_neither", "files", "a failure while metrics.json or ranks.npz is written",
         "mlasm evaluate", "neither file changes: the earlier pair stays, whole"),
]

INTERRUPT_OUTCOME = ("exit 130 'interrupted (resume with --resume)'; the resumed run ends with exactly the "
                     "tensors (weights, optimiser, scheduler, random state) and log of an uninterrupted run")
_INTERRUPTS = [
    ("interrupt_between_steps", "Ctrl-C between two steps"),
    ("interrupt_in_the_loss", "Ctrl-C in the loss, after dropout drew its masks"),
    ("interrupt_in_the_forward_pass", "Ctrl-C inside the model's forward pass, first step of epoch 2"),
    ("sigint_in_the_loss", "a real SIGINT delivered in the middle of a step"),
    ("sigint_in_the_optimiser_step", "a real SIGINT during the weight update (held to its end)"),
    ("interrupt_inside_the_optimiser_step", "KeyboardInterrupt raised inside the weight update"),
    ("interrupt_in_validation", "Ctrl-C during validation at the end of epoch 1"),
    ("interrupt_while_writing_a_checkpoint", "Ctrl-C while last.pt is written"),
    ("sigterm_in_the_loss", "SIGTERM in the middle of a step (exit 143 'terminated')"),
]
_CASES += [Case(key, "interrupts", text, "mlasm train, then mlasm train --resume", INTERRUPT_OUTCOME)
           for key, text in _INTERRUPTS]

# ---- issue 26: files nobody checked (tests/test_untrusted_files.py)
SECTIONS["paths"] = "Picture paths read from data files: only inside the folder the user named"
_OUT_OF = "leads to TARGET, outside --images DIR; pictures are read only inside it"
_WORKBENCH = "leads to TARGET, outside DATA"
_CASES += [
    Case("extract_csv_row_up_to_etc", "paths", "a captions CSV row `../../../etc/hostname`", _EXTRACT,
         f"CSV: line 2: picture '../../../etc/hostname' {_OUT_OF}"),
    Case("extract_csv_row_in_a_sibling_folder", "paths", "a captions CSV row `../outside/secret.png`", _EXTRACT,
         f"CSV: line 3: picture '../outside/secret.png' {_OUT_OF}"),
    Case("extract_csv_row_absolute", "paths", "a captions CSV row naming an absolute path", _EXTRACT,
         f"CSV: line 2: picture 'TARGET' {_OUT_OF}"),
    Case("extract_csv_row_symlink_out", "paths", "a captions CSV row naming a symlink in `--images` that leads out",
         _EXTRACT, f"CSV: line 2: picture 'link.png' {_OUT_OF}"),
    Case("extract_coco_json_up", "paths", "a COCO caption JSON `file_name` `../outside/secret.png`", _EXTRACT,
         f"JSON: images[1]: picture '../outside/secret.png' {_OUT_OF}"),
    Case("extract_allow_images_outside", "paths", "the same rows with `--allow-images-outside`",
         "extract_dataset / mlasm extract",
         "exit 0: the pictures outside are read and their paths recorded; meta.json says pictures_outside_allowed"),
    Case("prepare_karpathy_up_to_etc", "paths", "a Karpathy JSON `filename` `../../../../etc/passwd`",
         "mlasm prepare tsv --images DIR", f"JSON: images[0]: picture '../../../../etc/passwd' {_OUT_OF}"),
    Case("prepare_karpathy_in_a_sibling_folder", "paths",
         "a Karpathy JSON `filepath` `../outside`, `filename` `secret.png`", "mlasm prepare tsv --images DIR",
         f"JSON: images[1]: picture '../outside/secret.png' {_OUT_OF}"),
    Case("prepare_karpathy_absolute", "paths", "a Karpathy JSON `filename` naming an absolute path",
         "mlasm prepare tsv --images DIR", f"JSON: images[0]: picture 'TARGET' {_OUT_OF}"),
    Case("prepare_karpathy_symlink_out", "paths", "a Karpathy JSON `filename` naming a symlink that leads out",
         "mlasm prepare tsv --images DIR", f"JSON: images[0]: picture 'link.png' {_OUT_OF}"),
    Case("prepare_allow_images_outside", "paths", "the same with `--allow-images-outside`",
         "mlasm prepare tsv --images DIR",
         "exit 0: the path outside is recorded, meta.json says pictures_outside_allowed, the workbench reads it"),
    Case("workbench_image_path_up_to_etc", "paths", "`{split}_image_paths.txt` line `../../../etc/hostname`",
         "WorkbenchSession.picture / split.get_image", f"PATHS: line 1: picture 'DATA/../../../etc/hostname' {_WORKBENCH}"),
    Case("workbench_image_path_in_a_sibling_folder", "paths", "`{split}_image_paths.txt` line `../outside/secret.png`",
         "WorkbenchSession.picture / split.get_image", f"PATHS: line 2: picture 'DATA/../outside/secret.png' {_WORKBENCH}"),
    Case("workbench_image_path_absolute", "paths", "`{split}_image_paths.txt` line naming an absolute path",
         "WorkbenchSession.picture / split.get_image", f"PATHS: line 1: picture 'TARGET' {_WORKBENCH}"),
    Case("workbench_image_path_symlink_out", "paths", "`{split}_image_paths.txt` line naming a symlink that leads out",
         "WorkbenchSession.picture / split.get_image", f"PATHS: line 1: picture 'DATA/link.png' {_WORKBENCH}"),
    Case("workbench_picture_in_the_recorded_folder", "paths",
         "an absolute picture path inside the picture folder meta.json records (`--images` of prepare / extract)",
         "WorkbenchSession.picture / split.get_image", "the picture is shown"),
    Case("workbench_drawing_of_a_refused_picture", "paths", "the attention view of an image whose picture is refused",
         "widgets: picture_with_boxes", "a blank canvas with the boxes, and the one line as a warning"),
]
SECTIONS["memory"] = "Memory bounded by what the user set, whatever the input"
_CUT = "have more than 100 words and were cut to their first 100"
_TOO_LARGE = "more than the limit of 64 MP and 192 MB; refused before decoding"
_CASES += [
    Case("evaluate_caption_of_10000_words", "memory", "one 10,000-word caption among the 80 of a split", _EVALUATE,
         f"exit 0 and one line: warning: 1 of 80 captions of split 'dev' {_CUT} (the longest: caption 3, "
         f"10000 words)"),
    Case("train_caption_of_10000_words", "memory", "one 10,000-word caption among the 240 training captions", _TRAIN,
         f"exit 0 and one line: warning: 1 of 240 captions of split 'train' {_CUT} (the longest: caption 5, "
         f"10000 words)"),
    Case("workbench_typed_text_of_10000_words", "memory", "a typed query of 10,000 words",
         "WorkbenchSession.encode_text", f"one warning: 1 of 1 captions of the batch {_CUT}; its tokens are the 100 "
                                        "the model read"),
    Case("extract_strip_of_4_by_2000_pixels", "memory", "a 4 x 2,000 PNG", "extract_dataset / mlasm extract",
         "the backbone's input is 32 x 896 (its longer side at most 4 x --short-side), not 224 x 112,000"),
    Case("extract_picture_over_the_pixel_limit", "memory", "a PNG header declaring 9,000 x 8,000 pixels",
         "extract_dataset / mlasm extract",
         f"skipped with one line, listed in meta.json: FILE: 9000 x 8000 pixels (72 MP, 216 MB decoded as RGB), "
         f"{_TOO_LARGE}"),
    Case("extract_picture_over_the_byte_limit", "memory", "a PNG header declaring 8,000 x 7,000 RGBA pixels",
         "extract_dataset / mlasm extract",
         f"skipped with one line: FILE: 8000 x 7000 pixels (56 MP, 224 MB decoded as RGBA), {_TOO_LARGE}"),
    Case("extract_decompression_bomb", "memory", "a 100-byte PNG declaring 100,000 x 100,000 pixels",
         "extract_dataset / mlasm extract",
         "skipped with one line: FILE: refused before decoding: Image size (10000000000 pixels) exceeds limit"),
    Case("extract_max_picture_megapixels", "memory", "`--max-picture-megapixels 0.01` and a 200 x 100 photo",
         _EXTRACT, "skipped with one line: FILE: 200 x 100 pixels (0.02 MP, 0.06 MB decoded as RGB), more than the limit "
                   "of 0.01 MP and 0.03 MB; refused before decoding"),
    Case("workbench_picture_over_the_limit", "memory", "a picture of the split declaring 9,000 x 8,000 pixels",
         "WorkbenchSession.picture / split.get_image", f"FILE: 9000 x 8000 pixels (72 MP, 216 MB decoded as RGB), "
                                                       f"{_TOO_LARGE}"),
    Case("score_10000_regions_in_the_budget", "memory", "10 images x 10,000 regions under the default 64 MB budget",
         "MLASM.score_all / mlasm evaluate",
         "every block's pairs and its images' terms within the budget together, no (R, R) Gram matrix, the "
         "features read given back once encoded; the scores of the Gram path (within 1e-6); peak measured "
         "3.7 GB at first, now 92-114 MiB above the normal tiny split's (one thread)"),
    Case("encode_10000_regions_in_the_budget", "memory", "the same images encoded for scoring",
         "encode_split (mlasm evaluate, the workbench)",
         "images encoded in batches whose features and embeddings fit the block budget"),
    Case("threads_above_the_usable_cores", "memory", "`--threads 1000` on a machine of fewer cores", "any command",
         "one line: warning: --threads 1000: this process can use N cores (its CPU affinity and quota); using N"),
]

SECTIONS["caches"] = "Saved scores and work files: a damaged cache is ignored with one line and computed again"
_AGAIN = "; ignored, the scores are computed again"
_SESSION = "WorkbenchSession.from_checkpoint"


def _scores(key, what, line):
    return Case(key, "caches", what, _SESSION, f"FILE: {line}{_AGAIN}")


_NOT_ZIP = "not a readable .npz archive (File is not a zip file)"
_CASES += [
    _scores("scores_truncated", "`scores.npz` cut to half its length", _NOT_ZIP),
    _scores("scores_empty", "`scores.npz` of 0 bytes", _NOT_ZIP),
    _scores("scores_bit_flipped", "one bit flipped inside a matrix of `scores.npz`",
            "unreadable (BadZipFile: Bad CRC-32 for file 'final.npy')"),
    _scores("scores_changed_numbers", "finite numbers changed, the zip rewritten whole (its CRCs right)",
            "its matrices do not match their checksum (changed or damaged since evaluate wrote them)"),
    _scores("scores_missing_level", "`scores.npz` without the `global` matrix", "incomplete: no global"),
    _scores("scores_without_checksum", "`scores.npz` written by an earlier mlasm (no checksum)",
            "incomplete: no checksum (written by an earlier mlasm)"),
    _scores("scores_nan", "a NaN in the final matrix, the checksum made to match",
            "final holds 1 NaN or infinite scores (the file, not the model)"),
    _scores("scores_wrong_shape", "matrices of another shape under the same fingerprint",
            "t2i is float32 (3, 4), expected float32 (16, 80)"),
    _scores("scores_declaring_gigabytes", "a small `scores.npz` whose member declares 50 MB uncompressed",
            "member final.npy declares 52,428,928 bytes uncompressed, more than the 9,216 of a 16 x 80 float32 "
            "matrix; not decompressed"),
    Case("scores_heal_in_the_workbench", "caches", "any of these beside the checkpoint", _SESSION,
         "the session scores every pair again: the same matrices and ranks as a fresh session, no NaN blamed on "
         "the model"),
    Case("extract_work_file_truncated", "caches", "a picture's work file in `OUT/.work` cut short",
         "extract_dataset / mlasm extract", "one line: warning: WORK: a damaged work file (unreadable (BadZipFile: File "
                                            "is not a zip file)); extracting a.png again"),
    Case("extract_work_file_declaring_megabytes", "caches", "a work file whose regions member declares 4 MB",
         "extract_dataset / mlasm extract", "one line: warning: WORK: a damaged work file (regions.npy declares "
                                            "4,194,432 bytes, more than 36 regions take); extracting a.png again"),
    Case("extract_work_file_nan", "caches", "a work file holding a NaN feature", "extract_dataset / mlasm extract",
         "one line: warning: WORK: a damaged work file (NaN or infinite values); extracting a.png again"),
]
_CASES += [
    Case("extract_json_file_name_with_a_nul_byte", "paths", "a COCO caption JSON `file_name` holding a NUL byte",
         _EXTRACT, "JSON: images[0]: picture 'a\\x00b.png' is not a usable path (embedded null byte)"),
    Case("extract_csv_row_with_a_nul_byte", "paths", "a captions CSV row holding a NUL byte", _EXTRACT,
         "CSV: line 2: picture 'a\\x00b.png' is not a usable path (embedded null byte)"),
    Case("workbench_image_path_symlink_loop", "paths", "`{split}_image_paths.txt` line naming a symlink loop",
         "WorkbenchSession.picture / split.get_image", "PATHS: line 1: picture 'DATA/loop.png' is not a usable path"),
    Case("prepare_coco_captions_absolute", "paths", "a COCO caption JSON `file_name` naming an absolute path",
         "mlasm prepare tsv --images DIR", f"JSON: images[0]: picture 'TARGET' {_OUT_OF}"),
]

SECTIONS["kept"] = "Nothing replaced unasked; files written whole; interrupted writes finished"
_CASES += [
    Case("demo_into_an_earlier_demo", "kept", "`mlasm demo --out DIR` where an earlier demo trained", "mlasm demo",
         "DIR/mlasm: already holds a demo's trained model (last.pt, best.pt, train_log.jsonl); replace it with "
         "--overwrite, or choose another --out"),
    Case("demo_compare_into_an_earlier_comparison", "kept", "`mlasm demo --compare` where only the local-only model "
         "of an earlier comparison is", "mlasm demo", "DIR/local_only: already holds a demo's trained model"),
    Case("demo_overwrite", "kept", "the same with `--overwrite`", "mlasm demo",
         "the check passes and the demo trains anew"),
    Case("train_out_empty", "kept", "`--out ''`", _TRAIN, "--out '': an empty name, expected a folder"),
    Case("evaluate_out_empty", "kept", "`--out ''`", _EVALUATE, "--out '': an empty name, expected a folder"),
    Case("extract_out_empty", "kept", "`--out ''`", _EXTRACT, "--out '': an empty name, expected a folder"),
    Case("demo_out_empty", "kept", "`--out ''`", "mlasm demo", "--out '': an empty name, expected a folder"),
    Case("export_page_disk_full", "kept", "the disk fills up while a page is written", "mlasm export-notebooks",
         "OUT/PAGE.html: No space left on device (nothing was changed); the earlier complete page is intact"),
    Case("export_script_disk_full", "kept", "the disk fills up while a page's script is copied",
         "mlasm export-notebooks", "OUT/widget-assets/anywidget.js: No space left on device (nothing was changed)"),
    Case("workbench_save_figure_disk_full", "kept", "the disk fills up while the workbench saves a picture",
         "save_figure / the SVG and PNG buttons",
         "FILE: No space left on device (nothing was changed); the earlier picture is intact"),
    Case("evaluate_interrupted_between_renames", "kept", "Ctrl-C between evaluate's renames (ranks.npz replaced, "
         "scores.npz and metrics.json not yet)", _EVALUATE,
         "the renames are finished: ranks.npz, scores.npz and metrics.json of the new evaluation, together"),
    Case("evaluate_killed_between_renames", "kept", "kill -9 between evaluate's renames", _EVALUATE,
         "the next evaluate, or the workbench opening the folder, finishes the renames from the journal: all three "
         "files of the killed evaluation"),
    Case("prepare_stopped_among_final_renames", "kept", "`mlasm prepare tsv` stopped while renaming its finished "
         "files", "mlasm prepare tsv", "the same command resumes and writes the files of a run never stopped"),
    Case("prepare_input_touched", "kept", "the TSV's time stamp changed (touch, a copy) during a stopped "
         "conversion", "mlasm prepare tsv", "the same command resumes: inputs are known by size and content"),
    Case("prepare_input_changed", "kept", "the TSV's content changed during a stopped conversion", "mlasm prepare tsv",
         "OUT: holds an unfinished conversion of other inputs or settings (tsv differ from what it began with); "
         "give those to continue it, or pass --restart to begin again with these"),
    Case("prepare_record_of_rows_damaged", "caches", "a truncated `.prepare-filled.npz` in a stopped conversion",
         "mlasm prepare tsv", "FILE: the unfinished conversion's record of written rows is damaged (File is not a zip "
                              "file); pass --restart to begin again"),
    _scores("scores_a_text_file", "a text file named `scores.npz`", _NOT_ZIP),
]

# issue 26, second part: silent wrong results, tracebacks and poor messages
_CASES += [
    Case("checkpoint_vocab_not_its_fingerprint", "data", "a checkpoint whose word list was edited (two words "
         "swapped) after training: the same size, not its own `vocab_fingerprint`", _EVALUATE,
         "CKPT: its vocabulary (N words) does not match its own vocab_fingerprint"),
    Case("checkpoint_config_wrong_type", "data", "a checkpoint config of the wrong type (`\"embed_size\": \"32\"`)",
         _EVALUATE, "CKPT: inconsistent checkpoint (ValueError: config embed_size: expected a whole number, got "
                    "'32' (str))"),
    Case("checkpoint_config_not_a_mapping", "data", "a checkpoint whose config is a list", _EVALUATE,
         "CKPT: inconsistent checkpoint (ValueError: the config is a list, expected a mapping of MLASMConfig "
         "settings)"),
    Case("checkpoint_tensor_of_another_shape", "data", "a checkpoint whose weights hold one tensor of another shape",
         _EVALUATE, "CKPT: inconsistent checkpoint: tensor NAME is SHAPE in the checkpoint, OWN in the model its "
                    "config describes"),
    Case("resume_without_optimizer_state", "runs", "`last.pt` saved without the optimiser's state (best.pt copied "
         "over it), resumed with a changed `--epochs`; no file of the run changes", "mlasm train --resume",
         "LAST: holds no optimizer and no scheduler state (a model saved for use, not a training checkpoint), so "
         "--resume cannot continue it"),
]

SECTIONS["silent"] = "Inputs once read wrong without a word: read right, or refused in one line"
_PREPARE = "mlasm prepare tsv"
_DEEP = "its JSON is nested too deeply to read (more than about"
_CASES += [
    Case("caps_txt_with_a_bom", "silent", "`{split}_caps.txt` starting with a UTF-8 byte-order mark",
         "read_split (every command)", "the mark is dropped: the first caption's first word is read, not <unk>"),
    Case("caption_csv_with_a_bom", "silent", "a captions CSV saved with a byte-order mark", _EXTRACT,
         "the mark is dropped: the header and the first row are read as written"),
    Case("coco_json_with_a_bom", "silent", "a COCO caption JSON saved with a byte-order mark", _EXTRACT,
         "the mark is dropped: the file is read as written"),
    Case("tsv_box_inverted", "silent", "a TSV box with x2 < x1 (a negative width)", _PREPARE,
         "TSV: line 1 (image 0), field boxes: box 0 is (50, 10, 20, 30), a negative width or height (1 such "
         "boxes); expected x1 y1 x2 y2 with x1 <= x2 and y1 <= y2"),
    Case("tsv_features_empty", "silent", "a TSV line whose features field is empty", _PREPARE,
         "TSV: line 1 (image 0), field features: empty; expected num_boxes x D float32 values (D > 0)"),
    Case("tsv_image_twice", "silent", "the same image_id on two TSV lines, read whole", "read_tsv",
         "TSV: image 1000 appears a second time (records 1 and 2); expected one line per image"),
    Case("caption_csv_row_twice", "silent", "a captions CSV row repeated (the same picture and caption)", _EXTRACT,
         "CSV: line 3 repeats line 2 (a.png, the same caption); expected each caption once"),
    Case("check_zero_d_features", "silent", "`{split}_ims.npy` of shape (2, 3, 0)", "mlasm check",
         "ims.npy: shape (2, 3, 0): its regions have 0-d features; expected (images, regions, dim) with dim > 0"),
    Case("prepare_split_given_twice", "silent", "`--split test=train --split test=test`", _PREPARE,
         "--split test: given twice (test=train and test=test); expected each output split once"),
    Case("evaluate_split_of_one_image", "silent", "a split of one image and its 5 captions", _EVALUATE,
         "split 'one' (DATA): its 5 captions describe 1 of its 1 images; ranking needs captions of at least 2 "
         "images (image-to-text recall and the gap between true and false pairs are undefined here)"),
    Case("evaluate_captions_on_one_image", "silent", "a split of 3 images whose captions all describe the first",
         _EVALUATE, "split 'one' (DATA): its 5 captions describe 1 of its 3 images"),
    Case("shapescenes_cache_umask", "silent", "the ShapeScenes cache built under umask 022", "load_shapescenes",
         "the cache folder is drwxr-xr-x, as mkdir makes it (was drwx------)"),
]
SECTIONS["readers"] = "Files that ended in a traceback or a line naming no file"
_CASES += [
    *[Case(f"json_nested_deep_{what}", "readers", f"{name} nested 100,000 deep", command, f"FILE: not a usable {kind}: "
           + _DEEP) for what, name, command, kind in (
        ("grounding", "`{split}_grounding.json`", "mlasm check", "grounding file"),
        ("meta", "`meta.json`", "mlasm check", "JSON file"),
        ("attributes", "`{split}_attributes.json`", "mlasm check", "JSON file"),
        ("karpathy", "a Karpathy split JSON", _PREPARE, "annotation file"),
        ("scan_vocab", "SCAN's vocabulary JSON", "mlasm prepare scan", "vocabulary file"))],
    Case("npy_is_a_zip", "readers", "`{split}_ims.npy` that is really a zip (an .npz renamed)", "mlasm check",
         "FILE: not a readable .npy array: a zip archive (an .npz of several arrays?)"),
    Case("npy_symlink_to_text", "readers", "`{split}_ims.npy`, a symlink to a text file", "mlasm check",
         "FILE (a link to TARGET): not a readable .npy array: a file that starts with b'hello, w'"),
    Case("npy_of_python_objects", "readers", "`{split}_ims.npy` holding a pickled object array", "mlasm check",
         "FILE: holds Python objects (a pickled array), not numbers; mlasm does not unpickle data files"),
    Case("prepare_state_not_json", "readers", "a `.prepare-state.json` cut short in a stopped conversion",
         _PREPARE, "FILE: invalid JSON at line 1, column 2: Unterminated string starting at; the "
                   "unfinished conversion's state is damaged: pass --restart to begin again"),
    Case("prepare_state_of_another_shape", "readers", "a `.prepare-state.json` holding a list", _PREPARE,
         "FILE: a JSON list, expected an object; the unfinished conversion's state is damaged: pass --restart"),
    Case("prepare_state_damaged_restart", "readers", "either of these with `--restart`", _PREPARE,
         "the conversion begins again and finishes"),
    Case("check_file_cut_short", "readers", "`{split}_ims.npy` cut short while `mlasm check` reads it (a memory map: "
         "SIGBUS, the process killed without a word)", "mlasm check / check_features",
         "FILE: the file is now N bytes, M when it was opened: it was cut short while being read"),
    Case("prepare_disk_full", "readers", "the disk fills up while prepare writes a row", _PREPARE,
         "OUT/train_ims.npy: No space left on device while writing row 1 (kept in .train_ims.npy.partial); free "
         "some space and run the same command to resume"),
    Case("shapescenes_disk_full", "readers", "the disk fills up while the ShapeScenes cache is built",
         "load_shapescenes", "CACHE: No space left on device while building the ShapeScenes cache (nothing was "
                             "installed; its space was freed)"),
    Case("caption_csv_latin1", "readers", "a captions CSV saved in Latin-1", _EXTRACT,
         "CSV: line 2 is not UTF-8 text (byte 0xe9: invalid continuation byte); save the file as UTF-8"),
    Case("coco_json_duplicate_id", "readers", "two COCO `images` entries with the same id", _EXTRACT,
         "JSON: images[1]: id 1 is also the id of images[0]; expected each image once, with its own id"),
    Case("export_invalid_notebook", "readers", "an `.ipynb` that is not JSON, or JSON of another shape",
         "mlasm export-notebooks", "NB: not a readable notebook ("),
    Case("check_missing_folder", "readers", "`mlasm check` of a folder that does not exist", "mlasm check",
         "DIR: no such folder (give 'shapescenes' or a folder in the precomp format)"),
]

_CASES += [
    Case("glove_with_a_bom", "silent", "a GloVe text file saved with a byte-order mark", "mlasm train --glove",
         "the mark is dropped: the first word gets its vector (was a word of its own, the real one left at random)"),
    Case("train_log_damaged", "readers", "a `train_log.jsonl` line cut short, or not an object", "mlasm train --resume",
         "LOG: line 1 is not an epoch's row (a JSON object with a whole-number \"epoch\"); the log was changed or "
         "damaged: restore it, or remove the line"),
    Case("checkpoint_progress_of_another_run", "readers", "`last.pt` whose progress holds a key this mlasm does not "
         "know, or a counter of another type (`\"epoch\": \"1\"`)", "mlasm train --resume",
         "LAST: its \"progress\""),
]

_CASES += [
    Case("line_files_with_a_bom", "silent", "`{split}_ids.txt` and `{split}_positives.txt` saved with a byte-order "
         "mark", "read_split (every command)", "the mark is dropped: the first image id and the first caption's "
         "positives read as written"),
    Case("check_a_file_not_a_folder", "readers", "`mlasm check` given a file", "mlasm check",
         "FILE: a file, expected a folder (give 'shapescenes' or a folder in the precomp format)"),
]

_CASES += [
    Case("train_dev_split_of_one_image", "silent", "a dev split of one image (or `--validation-images 1`)", _TRAIN,
         "split 'dev' (DATA): its 5 captions describe 1 of its 1 images; ranking needs captions of at least 2 images"),
]

_CASES += [
    Case("export_kernel_dies", "readers", "a notebook whose kernel dies during export (`os._exit`, killed for memory)",
         "mlasm export-notebooks", "NB: its kernel died while a cell ran (a crash, or killed for memory); no page "
                                   "was written for it"),
]

CASES: dict[str, Case] = {case.key: case for case in _CASES}
assert len(CASES) == len(_CASES), "case keys must be unique"


def cases(section: str) -> list[Case]:
    return [case for case in _CASES if case.section == section]


def render() -> str:
    """docs/bad-inputs.md: one table per section."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["# Bad inputs and faults, and what the user sees", "",
             "Every row is a test case (`tests/bad_inputs.py`, used by `tests/test_reliability.py` and",
             "`tests/test_resume.py`). A user error ends with exit status 2 and one line,",
             "`mlasm COMMAND: error: ...`, naming the file, option or field and what was expected; the",
             "table shows what that line says (upper-case words stand for the paths given). Generated by",
             "`python tests/bad_inputs.py`; a test fails when this file and the cases differ.", ""]
    for section, title in SECTIONS.items():
        lines += [f"## {title}", "", "| input | command | what the user sees |", "|---|---|---|"]
        lines += [f"| {cell(c.input)} | `{cell(c.command)}` | {cell(c.shows)} |" for c in cases(section)]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC} ({len(CASES)} cases)")
