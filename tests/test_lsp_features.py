"""The language server's features as functions of a document (cnnc/lsp/features.py), by feature.
The end-to-end tests (test_lsp_server.py) drive the same code through a real client."""
import re
from pathlib import Path

import pytest

pytest.importorskip("pygls")

from lsprotocol import types  # noqa: E402

from cnnc.cli import main  # noqa: E402
from cnnc.lsp import features  # noqa: E402
from cnnc.lsp import analysis as front  # noqa: E402
from cnnc.lsp.analysis import analyse  # noqa: E402
from cnnc.lsp.formatting import format_text  # noqa: E402

from conftest import ROOT
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.cnn"))
URI = "file:///net.cnn"
HEADLINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning): (?P<message>.*)$")


def document(text: str) -> features.Document:
    return features.make_document(URI, text)


def at(text: str, needle: str, offset: int = 0) -> types.Position:
    index = text.index(needle) + offset
    return types.Position(text.count("\n", 0, index), index - (text.rfind("\n", 0, index) + 1))


# ---- diagnostics are exactly what `cnnc check` prints ------------------------------------------------
def check_headlines(path: Path, capsys) -> list[tuple[int, int, str, str]]:
    """The `FILE:LINE:COL: severity: message` lines `cnnc check FILE` prints."""
    main(["check", str(path)])
    return [(int(m["line"]), int(m["col"]), m["severity"], m["message"])
            for m in map(HEADLINE.match, capsys.readouterr().err.splitlines()) if m]


@pytest.mark.parametrize("path", INVALID + sorted((ROOT / "specs").glob("*.cnn")), ids=lambda p: p.stem)
def test_diagnostics_are_the_errors_cnnc_check_prints_at_the_same_place(path, capsys):
    text = path.read_text()
    found = [(d.range.start.line + 1, d.range.start.character + 1, "error" if d.severity == 1 else "warning", d.message)
             for d in features.diagnostics(document(text))]
    assert found == check_headlines(path, capsys)


def test_every_note_becomes_related_information():
    text = (ROOT / "tests" / "invalid" / "kernel_too_large.cnn").read_text()
    (diagnostic,) = features.diagnostics(document(text))
    (note,) = diagnostic.related_information
    assert note.message.startswith("note: use a smaller kernel")
    assert note.location.range == diagnostic.range


def test_a_spec_without_errors_gets_its_warnings(tmp_path, capsys):
    text = "model m {\n    input x[1, 9, 9]\n    conv2d c(filters=2, kernel=2, stride=2)\n    flatten\n}\n"
    (tmp_path / "warned.cnn").write_text(text)
    (warning,) = features.diagnostics(document(text))
    assert [(3, 42, "warning", warning.message)] == check_headlines(tmp_path / "warned.cnn", capsys)
    assert warning.severity == types.DiagnosticSeverity.Warning
    assert warning.message.startswith("conv2d 'c': stride 2 leaves the last 1 row and column of the input 'x' unread")


def test_columns_are_counted_in_utf16_for_the_client():
    text = "# 😀 emoji\nmodel m {\n    input x[1]\n    dense d(units=0)  # 😀\n}\n"
    (diagnostic,) = features.diagnostics(document(text))
    assert diagnostic.range.start == types.Position(3, 18)  # the emoji after it does not count
    text = "# 😀\nmodel m { input x[1]; dense d(units=😀) }\n"
    (diagnostic,) = features.diagnostics(document(text))
    assert diagnostic.message == "unexpected character '😀'"
    assert (diagnostic.range.start.character, diagnostic.range.end.character) == (36, 38)  # a surrogate pair


# ---- shapes in spite of errors ---------------------------------------------------------------------
SPEC = """\
model net {
    input image[1, 28, 28]
    conv2d c1(filters=4, kernel=3)
    maxpool2d p1(size=2)
    conv2d c2(filters=8, kernel=99)
    flatten
}
"""


def test_layers_before_an_error_keep_their_shapes_and_later_ones_have_none():
    doc = document(SPEC)
    assert [h.label for h in features.inlay_hints(doc)] == ["-> [4, 26, 26]", "-> [4, 13, 13]"]
    assert "shape unknown" in features.hover(doc, at(SPEC, "c2(")).contents.value


def test_shapes_survive_a_half_written_line():
    text = SPEC.replace("    flatten\n", "    conv2d c3(filters=\n").replace("kernel=99", "kernel=3")
    doc = document(text)
    assert [h.label for h in features.inlay_hints(doc)] == ["-> [4, 26, 26]", "-> [4, 13, 13]", "-> [8, 11, 11]"]
    assert "[4, 13, 13] -> [8, 11, 11]" in features.hover(doc, at(text, "c2(")).contents.value


def test_shapes_survive_a_missing_closing_brace():
    text = SPEC.replace("kernel=99", "kernel=3").rstrip().rstrip("}")
    assert [h.label for h in features.inlay_hints(document(text))][-1] == "-> [968]"


def test_hover_on_a_model_name_gives_its_totals():
    text = SPEC.replace("kernel=99", "kernel=3")
    hover = features.hover(document(text), at(text, "net"))
    assert hover.contents.value.split("\n\n") == ["**model net**: [1, 28, 28] -> [968]", "parameters: 336",
                                                  "MACs: 59,184 per sample"]


def test_code_lenses_carry_the_shapes_for_clients_without_inlay_hints():
    lenses = features.code_lenses(document(SPEC))
    assert [(lens.range.start.line, lens.command.title) for lens in lenses] == [
        (2, "-> [4, 26, 26]"), (3, "-> [4, 13, 13]")]


# ---- completion ----------------------------------------------------------------------------------
def labels(text: str, needle: str, offset: int) -> list[str]:
    return [item.label for item in features.completion(document(text), at(text, needle, offset)).items]


def test_completion_leaves_out_arguments_already_given():
    text = SPEC.replace("conv2d c1(filters=4, kernel=3)", "conv2d c1(filters=4, kernel=3, ")
    assert labels(text, "kernel=3, ", 10) == ["stride", "padding", "dilation", "bias", "activation", "slope",
                                             "groups", "from"]


def test_completion_of_padding_and_bias_values():
    text = SPEC.replace("kernel=3)", "kernel=3, padding=)", 1)
    assert labels(text, "padding=", 8) == ["same", "valid"]
    text = SPEC.replace("kernel=3)", "kernel=3, bias=)", 1)
    assert labels(text, "bias=", 5) == ["true", "false"]


def test_completion_of_the_loss():
    text = SPEC.replace("    flatten\n", "    flatten\n    loss \n")
    assert labels(text, "loss ", 5) == ["cross_entropy", "mse", "nll"]


def test_completion_in_a_block_offers_its_parameters_as_values_and_in_as_a_name():
    text = "block basic(width) {\n    conv2d c(filters=, kernel=3)\n    add s(c, )\n}\n"
    assert "width" in labels(text, "filters=", 8)
    assert set(labels(text, "s(c, ", 5)) == {"in", "c"}


def test_completion_inside_a_block_instance_offers_the_block_parameters():
    text = "block basic(width, stride=1) {\n    relu r\n}\nmodel m {\n    input x[1, 8, 8]\n    basic b1()\n}\n"
    assert labels(text, "b1(", 3) == ["width", "stride", "from"]


def test_no_completion_inside_a_comment_and_keywords_at_top_level():
    text = SPEC + "# con\n\n"
    assert labels(text, "# con", 5) == []
    assert labels(text + "mo", "mo", 2) == ["model", "block"]


# ---- names ---------------------------------------------------------------------------------------
BLOCKS = """\
block basic(width, stride=1) {
    conv2d c1(filters=width, kernel=3, stride=stride, padding=1)
    add sum(c1, in)
}
model net {
    input image[1, 28, 28]
    basic s1(width=8)
    basic s2(width=8, from=s1)
    conv2d
    relu out(from=conv2d_1)
}
"""


def test_definition_of_a_block_instance_is_the_block():
    found = features.definition(document(BLOCKS), at(BLOCKS, "basic s2"))
    assert found.range.start == at(BLOCKS, "basic(")


def test_hover_on_a_block_argument_gives_the_parameter_and_its_default():
    doc = document(BLOCKS)
    assert features.hover(doc, at(BLOCKS, "width=8")).contents.value == \
        "**width**: a parameter of block basic\n\ndefault: none: required"
    text = BLOCKS.replace("basic s1(width=8)", "basic s1(width=8, stride=2)")
    assert features.hover(document(text), at(text, "stride=2")).contents.value == \
        "**stride**: a parameter of block basic\n\ndefault: `1`"


def test_hover_on_a_value_describes_its_argument_or_the_word():
    doc = document(SPEC)
    assert features.hover(doc, at(SPEC, "kernel=3", 7)).contents.value.startswith("**kernel**: the kernel size")
    text = SPEC.replace("kernel=3)", "kernel=3, padding=same)", 1)
    assert features.hover(document(text), at(text, "same")).contents.value == \
        "**same**: padding that keeps the spatial size (stride 1)"


def test_hover_on_a_name_in_from_describes_the_layer_it_names():
    text = SPEC.replace("kernel=99)", "kernel=3)\n    conv2d side(filters=2, kernel=1, from=c1)")
    hover = features.hover(document(text), at(text, "from=c1", 5))
    assert hover.contents.value.startswith("**conv2d c1**\n\n[1, 28, 28] -> [4, 26, 26]")


def test_rename_of_a_block_renames_every_instance():
    edit = features.rename(document(BLOCKS), at(BLOCKS, "basic("), "residual")
    assert sorted(e.range.start.line for e in edit.changes[URI]) == [0, 6, 7]


def test_rename_of_a_block_parameter_stays_in_the_block():
    edit = features.rename(document(BLOCKS), at(BLOCKS, "width,"), "channels")
    assert sorted((e.range.start.line, e.range.start.character) for e in edit.changes[URI]) == [(0, 12), (1, 22)]


def test_an_unnamed_layer_is_found_by_its_automatic_name_but_not_renamed():
    doc = document(BLOCKS)
    found = features.definition(doc, at(BLOCKS, "=conv2d_1", 1))
    assert found.range.start == at(BLOCKS, "conv2d\n")
    with pytest.raises(features.RenameRefused, match="named automatically"):
        features.rename(doc, at(BLOCKS, "=conv2d_1", 1), "stem")


def test_rename_refuses_reserved_words_and_non_names():
    doc = document(BLOCKS)
    with pytest.raises(features.RenameRefused, match="reserved word"):
        features.rename(doc, at(BLOCKS, "s1("), "dense")
    with pytest.raises(features.RenameRefused, match="not a name"):
        features.rename(doc, at(BLOCKS, "s1("), "2x")


def test_symbols_outline_blocks_and_models():
    symbols = features.document_symbols(document(BLOCKS))
    assert [(s.name, s.kind, [c.name for c in s.children]) for s in symbols] == [
        ("basic", types.SymbolKind.Function, ["c1", "sum"]),
        ("net", types.SymbolKind.Module, ["image", "s1", "s2", "conv2d_1", "out"])]


# ---- quick fixes ---------------------------------------------------------------------------------
def fixes(text: str) -> dict[str, list[tuple[int, int, str]]]:
    doc = document(text)
    whole = types.Range(types.Position(0, 0), types.Position(len(doc.lines), 0))
    return {a.title: [(e.range.start.line, e.range.start.character, e.new_text) for e in a.edit.changes[URI]]
            for a in features.code_actions(doc, whole)}


def test_quick_fix_pads_a_kernel_larger_than_its_input():
    text = "model m {\n    input x[1, 4, 4]\n    conv2d c(filters=1, kernel=5)\n}\n"
    assert fixes(text)["use padding=1"] == [(2, 32, ", padding=1")]


def test_quick_fix_replaces_an_existing_padding():
    text = "model m {\n    input x[1, 3, 3]\n    conv2d c(filters=1, kernel=7, padding=1)\n}\n"
    assert fixes(text)["use padding=2"] == [(2, 42, "2")]


def test_quick_fix_takes_the_did_you_mean():
    text = "model m {\n    input x[1, 4, 4]\n    conv2d c(filters=1, kernel=3, activation=rleu)\n}\n"
    assert fixes(text) == {"change to 'relu'": [(2, 45, "relu")]}


def test_quick_fix_writes_an_integer_for_a_whole_float():
    text = "model m {\n    input x[1, 4, 4]\n    conv2d c(filters=1, kernel=3.0)\n}\n"
    assert fixes(text) == {"write kernel=3": [(2, 31, "3")]}


def test_quick_fix_adds_a_missing_argument():
    text = "model m {\n    input x[1, 4, 4]\n    conv2d c(kernel=3)\n}\n"
    assert fixes(text) == {"add filters=16": [(2, 21, ", filters=16")]}


def test_quick_fix_closes_what_is_left_open():
    assert fixes("model m {\n    input x[1, 4, 4]\n    dense d(units=3\n}\n") == {
        "close the argument list with ')'": [(2, 19, ")")]}
    assert fixes("model m {\n    input x[1, 4\n    flatten\n}\n") == {
        "close the input dimensions with ']'": [(1, 16, "]")]}
    assert fixes("model m {\n    input x[1]\n    relu\n") == {"close the model block with '}'": [(2, 8, "\n}")]}


def test_every_shipped_spec_analyses_without_errors():
    for path in sorted((ROOT / "specs").glob("*.cnn")):
        analysis = analyse(path.read_text(), str(path))
        assert [d for d in analysis.diagnostics if d.severity == "error"] == [], path
        assert analysis.layers, path


# ---- graph and block specs (issue 14's language) ----------------------------------------------------
RESNET8 = (ROOT / "specs" / "resnet8.cnn").read_text()


def test_a_note_at_the_instance_becomes_located_related_information():
    text = (ROOT / "tests" / "invalid" / "error_inside_a_block.cnn").read_text()
    (diagnostic,) = features.diagnostics(document(text))
    hint, instance = diagnostic.related_information
    assert hint.message.startswith("note: make them agree")
    assert instance.message == "note: in instance 's2' of block 'basic' with width=32, stride=2"
    assert (instance.location.range.start.line, instance.location.range.start.character) == (9, 10)


def test_hover_on_an_instance_gives_its_shapes_and_sums_its_layers():
    value = features.hover(document(RESNET8), at(RESNET8, "down s2")).contents.value
    parts = value.split("\n\n")
    assert parts[:3] == ["**down s2**: an instance of block down", "[16, 28, 28] -> [32, 14, 14]",
                         "parameters: 14,528 in 9 layers"]
    assert "- `s2.proj` conv2d -> [32, 14, 14]" in parts[4]


def test_hover_in_a_block_body_gives_each_instance_s_shapes():
    value = features.hover(document(RESNET8), at(RESNET8, "conv2d proj")).contents.value
    assert value.startswith("**conv2d proj**: 2-D convolution")
    assert "(in block down)" in value
    assert "- `s2.proj`: [16, 28, 28] -> [32, 14, 14]" in value
    assert "- `s3.proj`: [32, 14, 14] -> [64, 7, 7]" in value


def test_hover_on_a_merge_lists_what_it_reads():
    text = RESNET8.replace("    global_avgpool ", "    conv2d side(filters=64, kernel=1, from=s3)\n"
                                                  "    add both(s3, side)\n    global_avgpool ")
    value = features.hover(document(text), at(text, "add both")).contents.value
    assert value.split("\n\n")[:3] == ["**add both**", "[64, 7, 7] -> [64, 7, 7]",
                                       "reads: s3.out [64, 7, 7], side [64, 7, 7]"]
    assert "reads: s3.out [64, 7, 7]" in features.hover(document(text), at(text, "conv2d side")).contents.value


def test_inlay_hints_on_instances_and_none_in_block_bodies():
    hints = {h.position.line: h.label for h in features.inlay_hints(document(RESNET8))}
    assert hints[at(RESNET8, "basic s1").line] == "-> [16, 28, 28]"
    assert hints[at(RESNET8, "down s2").line] == "-> [32, 14, 14]"
    assert hints[at(RESNET8, "down s3").line] == "-> [64, 7, 7]"
    assert min(hints) > at(RESNET8, "model").line  # block bodies: shapes depend on the instance


def test_completion_in_from_and_merges_of_a_graph_model():
    text = RESNET8.replace("    global_avgpool ", "    add both(s3, \n    global_avgpool(from=)\n    global_avgpool ")
    in_merge = labels(text, "both(s3, ", 9)
    assert {"image", "stem", "stem_bn", "stem_relu", "s1", "s2", "s3"} <= set(in_merge)
    assert "c1" not in in_merge and "in" not in in_merge  # a block's names stay in the block
    assert "both" in labels(text, "(from=", 6)
    doc = document(text)
    items = {i.label: i.detail for i in features.completion(doc, at(text, "(from=", 6)).items}
    assert items["s2"] == "[32, 14, 14]" and items["image"] == "[1, 28, 28]"


def test_completion_of_from_on_instances_and_block_names_as_kinds():
    text = RESNET8.replace("down s3(width=64)", "down s3(width=64, ")
    assert labels(text, "width=64, ", 10) == ["stride", "from"]
    text = RESNET8.replace("    global_avgpool ", "    do\n    global_avgpool ")
    assert {"basic", "down"} <= set(labels(text, "    do\n", 6))


def test_completion_in_a_block_body_offers_in_and_earlier_names():
    text = RESNET8.replace("add sum(bn2, proj_bn)", "add sum(bn2, ")
    assert set(labels(text, "sum(bn2, \n", 9)) == {"in", "c1", "bn1", "r1", "c2", "bn2", "proj", "proj_bn"}


def test_definition_of_in_is_its_block_and_of_a_merge_operand_its_layer():
    doc = document(RESNET8)
    assert features.definition(doc, at(RESNET8, "bn2, in)", 6)).range.start == at(RESNET8, "basic(")
    assert features.definition(doc, at(RESNET8, "bn2, proj_bn)", 6)).range.start == at(RESNET8, "proj_bn\n")


def test_rename_of_a_layer_used_in_a_merge_and_in_from():
    doc = document(RESNET8)
    edit = features.rename(doc, at(RESNET8, "proj_bn)"), "shortcut")
    assert sorted((e.range.start.line, e.new_text) for e in edit.changes[URI]) == [(22, "shortcut"), (23, "shortcut")]
    text = RESNET8.replace("    global_avgpool ", "    conv2d side(filters=64, kernel=1, from=stem)\n    global_avgpool ")
    edit = features.rename(document(text), at(text, "stem("), "first")
    assert sorted(e.range.start.line for e in edit.changes[URI]) == [29, 35]
    uses = features.references(doc, at(RESNET8, "bn2\n"), include_declaration=False)
    assert [u.range.start.line for u in uses] == [11]  # the `bn2` of block basic, not of block down


def test_symbols_of_a_graph_spec():
    symbols = features.document_symbols(document(RESNET8))
    assert [(s.name, s.kind) for s in symbols] == [("basic", types.SymbolKind.Function),
                                                   ("down", types.SymbolKind.Function),
                                                   ("resnet8", types.SymbolKind.Module)]
    assert [c.name for c in symbols[0].children] == ["c1", "bn1", "r1", "c2", "bn2", "sum", "out"]
    model = {c.name: c.detail for c in symbols[2].children}
    assert model["s2"] == "down -> [32, 14, 14]" and model["stem"] == "conv2d -> [16, 28, 28]"


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_small", "inception_small"])
def test_graph_specs_format_idempotently_and_keep_their_program(name):
    text = (ROOT / "specs" / f"{name}.cnn").read_text()
    formatted = format_text(text)
    assert formatted is not None and format_text(formatted) == formatted
    assert front.program_signature(formatted) == front.program_signature(text)


def test_an_error_in_an_instance_keeps_the_shapes_before_it():
    text = (ROOT / "tests" / "invalid" / "error_inside_a_block.cnn").read_text()
    doc = document(text)
    assert [(h.position.line, h.label) for h in features.inlay_hints(doc)] == [(8, "-> [16, 28, 28]")]
    assert "shape unknown" in features.hover(doc, at(text, "s2(")).contents.value
    assert features.hover(doc, at(text, "c2, in", 4)).contents.value == "**in**: inside a block: the instance's input"


def test_rename_of_an_instance_used_in_from():
    edit = features.rename(document(BLOCKS), at(BLOCKS, "s1("), "first")
    assert sorted((e.range.start.line, e.range.start.character) for e in edit.changes[URI]) == [(6, 10), (7, 27)]
    symbols = features.document_symbols(document(BLOCKS))
    assert [c.kind for c in symbols[1].children][1:3] == [types.SymbolKind.Object] * 2


def test_hover_on_an_instance_inside_a_block_gives_each_enclosing_instance_s():
    text = (ROOT / "tests" / "invalid" / "error_inside_a_nested_block.cnn").read_text().replace("width=3", "width=2")
    text = text.replace("pair p2(width=2", "pair p2(width=4")  # the error fixed
    value = features.hover(document(text), at(text, "unit u2")).contents.value
    assert value.startswith("**unit u2**: an instance of block unit (in block pair)")
    assert "- `p1.u2`: [4, 8, 8] -> [4, 8, 8], parameters 40, MACs 2,304" in value
    assert "- `p2.u2`: [4, 8, 8] -> [4, 8, 8]" in value
    assert "- `p1.d`" not in value


def test_references_of_in_are_the_reads_of_the_block_input_in_that_block():
    doc = document(RESNET8)
    assert [r.range.start.line for r in features.references(doc, at(RESNET8, "bn2, in)", 6))] == [11]
    assert [r.range.start.line for r in features.references(doc, at(RESNET8, "from=in", 6))] == [21]
    with pytest.raises(features.RenameRefused):
        features.rename(doc, at(RESNET8, "from=in", 6), "x")


def test_hover_on_an_instance_with_from_says_what_it_reads():
    text = RESNET8.replace("down s3(width=64)", "down s3(width=64, from=s1)")
    value = features.hover(document(text), at(text, "s3(")).contents.value
    assert value.split("\n\n")[1:3] == ["[16, 28, 28] -> [64, 14, 14]", "reads: s1.out [16, 28, 28]"]
