"""The parser (cnnc.syntax): statements, separators, comments, values, locations, names, model selection;
and docs/language.md checked against what the checker does."""
import json
import re

import pytest

import cnnc
from cnnc.cli import main
from cnnc.diagnostics import SpecError
from cnnc.frontend import network_list_from_text
from cnnc.shapes import KIND_ARGS, REQUIRED
from cnnc.summary import network_record, summary_table
from cnnc.syntax import InputStmt, LayerStmt, LossStmt, parse


def layer_stmts(text: str, model: int = 0) -> list[LayerStmt]:
    return [s for s in parse(text).models[model].statements if isinstance(s, LayerStmt)]


def first_error(text: str):
    with pytest.raises(SpecError) as info:
        network_list_from_text(text, "t.cnn")
    return info.value.diagnostics[0]


def test_a_model_parses_into_statements_with_locations():
    text = "model net {\n    input image[1, 28, 28]\n    conv2d c1(filters=6, kernel=5)\n    loss mse\n}\n"
    (model,) = parse(text, "net.cnn").models
    assert model.name == "net" and (model.loc.line, model.loc.col) == (1, 7)
    assert (model.end.line, model.end.col) == (5, 1)
    inp, conv, loss = model.statements
    assert isinstance(inp, InputStmt) and inp.name == "image" and [d.value for d in inp.dims] == [1, 28, 28]
    assert (inp.loc.line, inp.loc.col, inp.name_loc.col) == (2, 5, 11)
    assert (inp.dims_loc.col, inp.dims_loc.length) == (16, len("[1, 28, 28]"))
    assert isinstance(conv, LayerStmt) and (conv.kind, conv.name) == ("conv2d", "c1")
    assert (conv.loc.line, conv.loc.col, conv.loc.length) == (3, 5, 6)
    assert (conv.name_loc.col, conv.name_loc.length) == (12, 2)
    filters, kernel = conv.arguments
    assert (filters.key, filters.value.kind, filters.value.value) == ("filters", "int", 6)
    assert (filters.loc.col, filters.value.loc.col) == (15, 23)
    assert (kernel.key, kernel.value.value, kernel.value.loc.col) == ("kernel", 5, 33)
    assert isinstance(loss, LossStmt) and loss.kind == "mse" and (loss.loc.line, loss.loc.col) == (4, 10)
    assert all(loc.file == "net.cnn" for loc in (model.loc, inp.loc, conv.loc, loss.loc))


def test_comments_blank_lines_and_semicolons_separate_statements():
    text = ("# a comment before the model\n\nmodel m {   # trailing comment\n\n"
            "    input x[8]; dense a(units=4);; relu   # two statements and an activation on one line\n"
            "    # a comment line inside the block\n    dense b(units=2); loss mse;\n}\n# after\n")
    kinds = [(s.kind, s.name) for s in layer_stmts(text)]
    assert kinds == [("dense", "a"), ("relu", None), ("dense", "b")]
    assert cnnc.network_from_text(text).output_shape == (2,)


def test_a_whole_model_on_one_line_and_statements_next_to_the_braces():
    one_line = cnnc.network_from_text("model m { input x[4]; dense d(units=3) }")
    same_line = cnnc.network_from_text("model m { input x[4]\n dense d(units=3) }")
    assert one_line.output_shape == same_line.output_shape == (3,)


def test_crlf_line_endings_tabs_and_a_byte_order_mark_are_accepted():
    text = "\ufeffmodel m {\r\n\tinput x[1, 8, 8]\r\n\tconv2d c(filters=2, kernel=3)\r\n}\r\n"
    net = cnnc.network_from_text(text)
    assert net.layer("c").out_shape == (2, 6, 6)
    assert (net.layer("c").loc.line, net.layer("c").loc.col) == (3, 2)  # a tab is one column


def test_pairs_are_height_then_width():
    (conv,) = layer_stmts("model m {\n input x[1, 9, 9]\n conv2d c(filters=1, kernel=( 3 ,5 ), stride=(1, 2))\n}")
    kernel = conv.arguments[1].value
    assert kernel.kind == "pair" and [v.value for v in kernel.value] == [3, 5]
    assert (kernel.loc.col, kernel.loc.length) == (29, len("( 3 ,5 )"))
    layer = cnnc.network_from_text("model m {\n input x[1, 9, 9]\n conv2d c(filters=1, kernel=(3, 5), stride=(1, 2))\n}").layer("c")
    assert layer.kernel == (3, 5) and layer.stride == (1, 2) and layer.out_shape == (1, 7, 3)


@pytest.mark.parametrize("written, value", [("0.5", 0.5), (".5", 0.5), ("5.", 5.0), ("1e-3", 1e-3), ("2.5E+2", 250.0),
                                            ("-0.25", -0.25), ("+1.5", 1.5), ("3e2", 300.0)])
def test_floats_including_exponents(written, value):
    (layer,) = layer_stmts(f"model m {{\n input x[4]\n leaky_relu(slope={written})\n}}")
    assert layer.arguments[0].value.kind == "float" and layer.arguments[0].value.value == value


def test_integers_and_floats_are_different_kinds():
    (a, b) = layer_stmts("model m {\n input x[4]\n dense a(units=3)\n dense b(units=3.0)\n}")
    assert (a.arguments[0].value.kind, b.arguments[0].value.kind) == ("int", "float")
    assert "got the number 3.0" in first_error("model m {\n input x[4]\n dense b(units=3.0)\n}").message


def test_negative_numbers_parse_and_are_reported_by_the_shape_pass():
    (pool,) = layer_stmts("model m {\n input x[1, 8, 8]\n maxpool2d p(size=2, stride=-1)\n}")
    assert pool.arguments[1].value.value == -1
    error = first_error("model m {\n input x[1, 8, 8]\n maxpool2d p(size=2, stride=-1)\n}")
    assert error.message == "maxpool2d 'p': stride must be positive; got -1"
    assert (error.loc.line, error.loc.col, error.loc.length) == (3, 29, 2)
    error = first_error("model m {\n input x[1, -8, 8]\n relu\n}")
    assert "input dimensions must be positive integers; got -8" in error.message


def test_words_and_booleans_are_words():
    (conv,) = layer_stmts("model m {\n input x[1, 8, 8]\n conv2d c(filters=1, kernel=3, padding=same, bias=false)\n}")
    assert [(a.value.kind, a.value.value) for a in conv.arguments[2:]] == [("word", "same"), ("word", "false")]
    net = cnnc.network_from_text("model m {\n input x[1, 8, 8]\n conv2d c(filters=1, kernel=3, padding=same, bias=false)\n}")
    assert net.layer("c").bias is False and net.param_count == 9


def test_an_empty_argument_list_is_no_arguments():
    (relu,) = layer_stmts("model m {\n input x[4]\n relu()\n}")
    assert relu.arguments == ()


def test_keywords_are_whole_words_only():
    stmts = layer_stmts("model m {\n input x[4]\n relu models\n relu input_layer\n relu loss_1\n}")
    assert [s.name for s in stmts] == ["models", "input_layer", "loss_1"]


def test_multiple_models_in_one_file():
    text = "model a {\n input x[4]\n dense d(units=2)\n}\n\nmodel b {\n input y[1, 4]\n conv1d c(filters=3, kernel=2)\n}\n"
    program = parse(text, "two.cnn")
    assert [m.name for m in program.models] == ["a", "b"]
    assert [m.loc.line for m in program.models] == [1, 6]
    a, b = network_list_from_text(text, "two.cnn")
    assert (a.name, a.output_shape, b.name, b.output_shape) == ("a", (2,), "b", (3, 3))
    assert b.input_name == "y" and b.file == "two.cnn"


def test_unnamed_layers_are_named_kind_and_count_of_that_kind():
    net = cnnc.network_from_text(
        "model m {\n input x[1, 12, 12]\n conv2d c1(filters=2, kernel=3)\n relu\n conv2d(filters=2, kernel=3)\n"
        " relu\n maxpool2d(size=2)\n flatten\n dense(units=4)\n dropout\n dense(units=2)\n}")
    assert [layer.name for layer in net.layers] == ["c1", "relu_1", "conv2d_2", "relu_2", "maxpool2d_1", "flatten_1",
                                                    "dense_1", "dropout_1", "dense_2"]
    assert net.layer("dropout_1").rate == 0.5  # the default
    assert net.input_name == "x"


def test_an_unnamed_input_is_called_input():
    net = cnnc.network_from_text("model m {\n input [4]\n dense(units=2)\n}")
    assert net.input_name == "input" and net.input_shape == (4,)


def test_syntax_errors_carry_a_location():
    with pytest.raises(SpecError) as info:
        parse("model m {\n input x[4]\n dense d(units=2\n}", "bad.cnn")
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.loc.file, diagnostic.loc.line, diagnostic.loc.col) == ("bad.cnn", 3, 17)
    assert diagnostic.message.startswith("unclosed '('")


def test_numbers_out_of_range_are_syntax_errors():
    error = first_error("model m {\n input x[4]\n dense d(units=99999999999999999999)\n}")
    assert "is too large" in error.message and (error.loc.line, error.loc.col) == (3, 16)
    error = first_error("model m {\n input x[4]\n leaky_relu(slope=1e999)\n}")
    assert "out of range" in error.message
    # once a crash (OverflowError while suggesting `write kernel=<int>`): infinity never reaches the shape pass
    error = first_error("model m {\n input x[1, 8, 8]\n conv2d c(filters=1, kernel=1e999)\n}")
    assert error.message == "number 1e999 is out of range" and (error.loc.line, error.loc.col) == (3, 29)


def test_a_number_with_thousands_of_digits_is_an_error_not_a_crash():
    error = first_error("model m {\n input x[4]\n dense d(units=" + "9" * 5000 + ")\n}")
    assert "is too large" in error.message and len(error.message) < 200


# ---- choosing a model: cnnc check --model, cnnc.read_network(model=) ---------------------------------------
TWO_MODELS = "model small {\n input x[4]\n dense d(units=2)\n}\nmodel big {\n input x[4]\n dense d(units=64)\n}\n"


def test_check_model_prints_only_that_model(tmp_path, capsys):
    path = tmp_path / "two.cnn"
    path.write_text(TWO_MODELS)
    assert main(["check", str(path), "--model", "big"]) == 0
    out = capsys.readouterr().out
    assert "model big" in out and "model small" not in out and "[64]" in out
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model big" in out and "model small" in out


def test_an_unknown_model_lists_the_names_there_are(tmp_path, capsys):
    path = tmp_path / "two.cnn"
    path.write_text(TWO_MODELS)
    assert main(["check", str(path), "--model", "medium"]) == 1
    err = capsys.readouterr().err
    assert "has no model 'medium'; it has: small, big" in err and "Traceback" not in err


def test_a_file_with_several_models_needs_a_model_name(tmp_path):
    path = tmp_path / "two.cnn"
    path.write_text(TWO_MODELS)
    with pytest.raises(ValueError, match=r"holds 2 models \(small, big\); choose one"):
        cnnc.read_network(path)
    assert cnnc.read_network(path, model="small").output_shape == (2,)
    assert cnnc.network_from_text(TWO_MODELS, model="big").output_shape == (64,)


# ---- docs/language.md stays true -------------------------------------------------------------------------
from conftest import DOCS

LANGUAGE_MD = DOCS / "language.md"
from conftest import SPECS


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", LANGUAGE_MD.read_text(), flags=re.S)


def test_every_cnn_example_in_the_docs_checks_cleanly():
    blocks = fenced_blocks("cnn")
    assert len(blocks) >= 5
    for block in blocks:
        for network in network_list_from_text(block, "docs.cnn"):
            assert network.warnings == (), network.name
    demo = cnnc.network_from_text(next(b for b in blocks if "shapes_demo" in b))
    assert demo.layer("wide").pad_before == (1, 2) and demo.layer("even").pad_after == (1, 1)
    assert demo.layer("pool").out_shape == (8, 11, 10)


def test_the_docs_name_every_kind_argument_and_default():
    text = LANGUAGE_MD.read_text()
    for kind, args in KIND_ARGS.items():
        assert f"`{kind}`" in text, kind
        for key, spec in args.items():
            assert f"`{key}`" in text, (kind, key)
            if spec.default not in (REQUIRED, None):
                default = {True: "true", False: "false"}.get(spec.default, spec.default)
                assert f"`{default}`" in text, (kind, key, default)


def test_the_summary_and_json_shown_in_the_docs_are_what_check_prints():
    text = LANGUAGE_MD.read_text()
    table = summary_table(cnnc.read_network(SPECS / "lenet5.cnn"))
    assert "\n".join(table.splitlines()[1:]) in text  # all but the title line, which names the path
    (shown,) = fenced_blocks("json")
    record = network_record(cnnc.read_network(SPECS / "worked_1d.cnn"))
    assert json.loads(shown) == {"models": [{**record, "file": "specs/worked_1d.cnn"}]}


def test_the_diagnostics_shown_in_the_docs_are_what_check_prints():
    text = LANGUAGE_MD.read_text()
    spec = "# lenet\nmodel m {\n    input image[1, 5, 5]\n    conv2d c1(filters=6, kernel=7)\n}\n"
    with pytest.raises(SpecError) as info:
        network_list_from_text(spec, "lenet.cnn")
    rendered = info.value.render().split("\n")
    assert "\n".join(rendered) in text
    warning_spec = "model m {\n    input image[1, 28, 28]\n    maxpool2d p(size=3)\n}\n"
    (warning,) = network_list_from_text(warning_spec, "w.cnn")[0].warnings
    assert warning.render(warning_spec) in text


def test_a_damaged_parser_cache_is_rebuilt(tmp_path, monkeypatch):
    from cnnc import syntax

    monkeypatch.setenv("CNNC_CACHE_DIR", str(tmp_path))
    syntax._parser.cache_clear()
    try:
        syntax.parse("model a {\n input x[1, 4]\n relu\n}\n")
        (cached,) = (tmp_path / "parser").iterdir()
        cached.write_bytes(b"not a parser")
        syntax._parser.cache_clear()
        program = syntax.parse("model a {\n input x[1, 4]\n relu\n}\n")
        assert program.models[0].statements[1].kind == "relu"
        assert cached.read_bytes() != b"not a parser"  # rebuilt and saved again
    finally:
        syntax._parser.cache_clear()
