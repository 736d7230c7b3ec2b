"""`cnnc check` on invalid specs: every mistake is reported as FILE:LINE:COL with the source line and a caret.

The corpus in tests/invalid/ holds one mistake (or one set of mistakes) per file. Each file starts with
one comment line per expected error, in the order they are reported:

    # expect: 4:29 kernel 7 is larger than the padded input

(the line and column of the caret, then a phrase that must appear in the message or its note).
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cnnc
from cnnc.cli import main

from conftest import INVALID
CORPUS = sorted(INVALID.glob("*.cnn"))
HEADLINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning): (?P<message>.*)$")
EXPECT = re.compile(r"^# expect: (?P<line>\d+):(?P<col>\d+) (?P<phrase>.+)$")

# Every error class the language promises to report, and the corpus file that shows it.
ERROR_CLASSES = {
    "unclosed parenthesis": "unclosed_paren",
    "unclosed bracket": "unclosed_bracket",
    "stray token": "stray_token",
    "stray character": "stray_character",
    "file without a model": "only_comments",
    "missing closing brace": "missing_closing_brace",
    "unknown layer kind": "unknown_kind",
    "unknown argument": "unknown_argument",
    "unknown activation": "unknown_activation",
    "unknown loss": "unknown_loss",
    "missing argument": "missing_argument",
    "duplicated argument": "duplicate_argument",
    "float kernel": "float_kernel",
    "pair in a 1-D layer": "pair_in_1d_layer",
    "zero size": "zero_filters",
    "negative size": "negative_stride",
    "kernel larger than its input": "kernel_too_large",
    "kernel larger than its padded input": "padded_kernel_still_too_large",
    "dilated kernel larger than its input": "dilated_kernel_too_large",
    "pooling window larger than its input": "pool_window_too_large",
    "asymmetric pooling padding over half the window": "asymmetric_pool_padding_over_half",
    "a pair of pairs in a 1-D padding": "padding_pair_of_pairs_in_1d",
    "output_padding too large": "output_padding_too_large",
    "transposed convolution cropping everything": "conv_transpose_crops_everything",
    "channel_shuffle groups not dividing": "channel_shuffle_groups_not_dividing",
    "nll without log_softmax": "nll_without_log_softmax",
    "log_softmax on feature maps": "log_softmax_as_conv_activation",
    "lrn on a flat input": "lrn_on_flat_input",
    "pooling padding over half the window": "pool_padding_over_half",
    "2-D layer on a 1-D input": "conv2d_on_1d_input",
    "2-D layer on a flat input": "pool2d_on_flat_input",
    "1-D layer on a 2-D input": "conv1d_on_2d_input",
    "dense on an unflattened input": "dense_on_unflattened_input",
    "cross_entropy on a non-flat output": "cross_entropy_on_feature_maps",
    "duplicate layer name": "duplicate_layer_name",
    "model without input": "no_input",
    "tensor too large": "output_too_large",
    "several mistakes in one file": "several_mistakes",
}
# The graph and block mistakes (issue #14).
GRAPH_ERROR_CLASSES = {
    "add operands of different shapes": "add_operands_of_different_shapes",
    "add naming every operand": "add_operands_of_different_sizes_three_way",
    "concat with other dimensions differing": "concat_spatial_mismatch",
    "concat mixing ranks": "concat_mixed_ranks",
    "merge of one input": "merge_with_one_input",
    "merge of no input": "merge_without_inputs",
    "unknown name in from=": "unknown_name_in_from",
    "unknown name in a merge": "unknown_name_in_merge",
    "name defined later": "name_defined_later",
    "groups not dividing the channels": "groups_not_dividing_channels",
    "groups not dividing the filters": "groups_not_dividing_filters",
    "eps not positive": "batchnorm_eps_not_positive",
    "momentum outside [0, 1]": "batchnorm_momentum_out_of_range",
    "in outside a block": "in_outside_a_block",
    "unknown block parameter": "unknown_block_parameter",
    "missing block parameter": "missing_block_parameter",
    "block using itself": "block_uses_itself",
    "block cycle through another block": "block_cycle_through_another",
    "duplicate instance name": "duplicate_instance_name",
    "error inside a block, noted at the instance": "error_inside_a_block",
    "error inside nested blocks, noted at each instance": "error_inside_a_nested_block",
    "operand names on a single-input layer": "operand_names_on_a_single_input_layer",
    "from= on a merge": "from_on_a_merge",
    "input statement in a block": "input_statement_in_a_block",
    "block named like a layer kind": "block_named_like_a_layer_kind",
    "misspelt block name": "unknown_kind_suggests_a_block",
    "misspelt new activation": "misspelt_activation_relu6",
}


def expectations(path: Path) -> list[tuple[int, int, str]]:
    found = []
    for line in path.read_text().splitlines():
        match = EXPECT.match(line)
        if not match:
            break
        found.append((int(match["line"]), int(match["col"]), match["phrase"]))
    return found


def diagnostics(stderr: str) -> list[dict]:
    """Split rendered diagnostics: headline, then (if the location has a line) the source line and the caret
    line, each indented by 4, then any `note:` line."""
    lines = stderr.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = HEADLINE.match(line)
        if not match:
            continue
        rest = []
        for follower in lines[i + 1:]:
            if HEADLINE.match(follower):
                break
            rest.append(follower)
        found.append({**match.groupdict(), "line": int(match["line"]), "col": int(match["col"]), "rest": rest})
    return found


def check_caret(diagnostic: dict, source: str) -> None:
    """The diagnostic quotes its source line and puts '^' under its column."""
    quoted, caret = diagnostic["rest"][0], diagnostic["rest"][1]
    assert quoted == "    " + source.split("\n")[diagnostic["line"] - 1].expandtabs(1)
    assert caret.startswith("    ") and caret.strip("~ ").startswith("^")
    assert caret.index("^") - 4 == diagnostic["col"] - 1, (quoted, caret)


def test_the_corpus_covers_every_error_class():
    assert len(CORPUS) >= 30 + 20
    names = {p.stem for p in CORPUS}
    missing = {cls: name for cls, name in {**ERROR_CLASSES, **GRAPH_ERROR_CLASSES}.items() if name not in names}
    assert not missing
    assert all(expectations(p) for p in CORPUS), [p.name for p in CORPUS if not expectations(p)]


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_invalid_spec_is_reported_at_its_token(path, capsys):
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    expected = expectations(path)
    line, col, _ = expected[0]
    assert err.startswith(f"{path}:{line}:{col}: error: ")
    found = diagnostics(err)
    assert [d["severity"] for d in found] == ["error"] * len(expected), err
    source = path.read_text()
    for diagnostic, (line, col, phrase) in zip(found, expected):
        assert (diagnostic["line"], diagnostic["col"]) == (line, col), err
        assert diagnostic["file"] == str(path)
        assert phrase in diagnostic["message"] + "\n" + "\n".join(diagnostic["rest"]), err
        check_caret(diagnostic, source)


def test_an_error_inside_a_block_notes_each_instance_at_its_location(capsys):
    path = INVALID / "error_inside_a_nested_block.cnn"
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    notes = [line for line in lines if ": note: " in line]
    source = path.read_text().split("\n")
    assert [note.split(": note: ")[1] for note in notes] == [
        "in instance 'p2.u1' of block 'unit' with w=3", "in instance 'p2' of block 'pair' with width=3"]
    for note in notes:  # each note is located, quotes its line and puts the caret under the instance's name
        _, line, col = note.split(": note: ")[0].rsplit(":", 2)
        quoted, caret = lines[lines.index(note) + 1], lines[lines.index(note) + 2]
        assert quoted == "    " + source[int(line) - 1] and caret.index("^") - 4 == int(col) - 1
        assert source[int(line) - 1][int(col) - 1:].startswith(("u1", "p2"))


@pytest.mark.parametrize("name", ["unclosed_paren", "kernel_too_large"])
def test_a_real_process_reports_the_error_without_a_traceback(name):
    path = INVALID / f"{name}.cnn"
    line, col, phrase = expectations(path)[0]
    command = [shutil.which("cnnc")] if shutil.which("cnnc") else [sys.executable, "-m", "cnnc.cli"]
    for argv in (command, [sys.executable, "-m", "cnnc.cli"]):
        result = subprocess.run(argv + ["check", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith(f"{path}:{line}:{col}: error: ")
        assert phrase in result.stderr
        assert "Traceback" not in result.stderr


def test_an_empty_file_has_no_model(tmp_path, capsys):
    path = tmp_path / "empty.cnn"
    path.write_text("")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:1:1: error: no model found")


def test_a_missing_file_is_one_line_without_a_traceback(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.cnn")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'nope.cnn'}: no such file"


def test_the_api_raises_a_value_error_carrying_the_located_diagnostics():
    text = (INVALID / "several_mistakes.cnn").read_text()
    with pytest.raises(ValueError) as info:
        cnnc.network_from_text(text)
    assert isinstance(info.value, cnnc.SpecError)
    locations = [(d.loc.line, d.loc.col) for d in info.value.diagnostics]
    assert locations == [(line, col) for line, col, _ in expectations(INVALID / "several_mistakes.cnn")]


# ---- warnings: the spec is valid (exit 0), but some input is silently never read -----------------------
def check_with_warnings(tmp_path, capsys, text: str, *extra: str) -> tuple[str, list[dict], str]:
    path = tmp_path / "warn.cnn"
    path.write_text(text)
    assert main(["check", str(path), *extra]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "error:" not in err
    found = diagnostics(err)
    assert all(d["severity"] == "warning" and d["file"] == str(path) for d in found)
    for diagnostic in found:
        check_caret(diagnostic, text)
    return out, found, text


def test_a_pooling_window_that_drops_the_last_row_and_column_warns(tmp_path, capsys):
    out, (warning,), _ = check_with_warnings(tmp_path, capsys, "model m {\n  input x[1, 28, 28]\n  maxpool2d p(size=3)\n}\n")
    assert (warning["line"], warning["col"]) == (3, 20)  # the size, which sets the stride too
    assert "stride 3 leaves the last 1 row and column of the input 'x' unread" in warning["message"]
    assert "(28 + 0 + 0 - 3) = 25 is not a multiple of 3" in warning["message"]
    assert "[1, 9, 9]" in out  # still checked and summarised


def test_only_the_axis_that_drops_rows_warns(tmp_path, capsys):
    _, (warning,), _ = check_with_warnings(tmp_path, capsys,
                                           "model m {\n  input x[1, 28, 27]\n  maxpool2d p(size=3, stride=3)\n}\n")
    assert (warning["line"], warning["col"]) == (3, 30)  # the stride
    assert "leaves the last 1 row of the input 'x' unread" in warning["message"]
    assert "column" not in warning["message"]


def test_a_1d_stride_that_drops_samples_warns(tmp_path, capsys):
    _, (warning,), _ = check_with_warnings(
        tmp_path, capsys, "model m {\n  input s[2, 11]\n  conv1d c(filters=3, kernel=4, stride=3)\n}\n")
    assert "stride 3 leaves the last 1 sample of the input 's' unread" in warning["message"]
    assert "(11 + 0 + 0 - 4) = 7 is not a multiple of 3, so 3 windows cover only 10 of the 11" in warning["message"]


def test_a_stride_larger_than_the_window_warns_about_the_gaps(tmp_path, capsys):
    _, warnings, _ = check_with_warnings(
        tmp_path, capsys, "model m {\n  input x[1, 9, 9]\n  conv2d c(filters=3, kernel=1, stride=2)\n}\n")
    (gap,) = warnings  # (9 - 1) is a multiple of 2: nothing left over at the end
    assert "stride 2 is larger than the window (1), so 1 of every 2 input rows and columns" in gap["message"]


def test_padding_that_absorbs_the_remainder_does_not_warn(tmp_path, capsys):
    # (8 + 1 + 1 - 3) % 2 = 1: the one position left over is the padding after the input, not the input
    _, warnings, _ = check_with_warnings(
        tmp_path, capsys, "model m {\n  input x[1, 8, 8]\n  conv2d c(filters=3, kernel=3, stride=2, padding=1)\n}\n")
    assert warnings == []


def test_a_softmax_before_cross_entropy_warns(tmp_path, capsys):
    _, (warning,), _ = check_with_warnings(
        tmp_path, capsys, "model m {\n  input x[8]\n  dense out(units=3)\n  softmax\n  loss cross_entropy\n}\n")
    assert (warning["line"], warning["col"]) == (4, 3)
    assert "cross_entropy applies softmax itself" in warning["message"]


def test_warnings_are_in_the_json_summary_too(tmp_path, capsys):
    out, found, _ = check_with_warnings(tmp_path, capsys, "model m {\n  input x[1, 28, 28]\n  maxpool2d p(size=3)\n}\n",
                                        "--json")
    (model,) = json.loads(out)["models"]
    assert [(w["line"], w["col"]) for w in model["warnings"]] == [(d["line"], d["col"]) for d in found] == [(3, 20)]
