"""Property tests: whatever text the checker is given, it answers with networks or located diagnostics.

Random text, random token soup, and mutations of the shipped specs and of graph and block specs (characters, tokens and lines deleted,
duplicated or swapped; random numbers in argument slots) go through the front end in-process
(`network_list_from_text`) and through `cnnc.cli.main`. The checker may only raise SpecError/CnncError,
every diagnostic must point inside the text, and the rendered caret must sit under that column.
"""
import contextlib
import io
import os
import re
import tempfile
from math import prod

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.cli import main
from cnnc.diagnostics import CnncError, Diagnostic
from cnnc.frontend import network_list_from_text, normalise_newlines
from cnnc.shapes import KIND_ARGS, MAX_ELEMENTS
from cnnc.summary import network_record, summary_table

from conftest import SPECS as SPEC_DIR

SPECS = sorted(SPEC_DIR.glob("*.cnn"))
# Graphs and blocks (issue #14) besides the shipped specs: every new form, small enough to check quickly.
GRAPH_TEXTS = ["""
block basic(width, stride=1) {
    conv2d c1(filters=width, kernel=3, stride=stride, padding=1, bias=false)
    batchnorm bn1(eps=1e-5, momentum=0.1)
    relu6 r1
    conv2d c2(filters=width, kernel=3, padding=1, groups=2)
    add sum(c2, in)
    silu out
}
model g {
    input image[4, 8, 8]
    conv2d stem(filters=4, kernel=1, activation=hardswish)
    basic s1(width=4)
    basic s2(width=4, from=stem)
    concat cat(s1, s2, image)
    conv2d dw(filters=12, kernel=3, groups=12, from=cat)
    global_avgpool
    dense fc(units=3)
    loss cross_entropy
}
""", """
block unit(w=2) { dense d(units=w); batchnorm bn }
block pair(width) { unit u1(w=width); unit u2(w=width, from=in); add s(u1, u2) }
model flat { input v[6]; pair p1(width=6); add total(p1, v); pair p2(width=3); concat k(p2, v, p2) }
"""]
SPEC_TEXTS = [p.read_text() for p in SPECS] + GRAPH_TEXTS
FILE = "fuzz.cnn"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = sorted({"model", "input", "loss", "cross_entropy", "mse", "same", "valid", "true", "false", "none", "x", "c1",
                "block", "in", "from", "b", "width", "s1", "stem"}
               | set(KIND_ARGS) | {key for args in KIND_ARGS.values() for key in args})
TOKENS = WORDS + ["(", ")", "[", "]", "{", "}", ",", "=", ";", "\n", " ", "  ", "\t", "# note", "\r\n",
                  "0", "1", "2", "3", "5", "-1", "28", "1.5", "1e3", ".5", "99999999999999999999", "@", "\x0c"]


def assert_located(diagnostic: Diagnostic, text: str) -> None:
    """The location is inside the text (a column may sit one past the end of its line) and renders with a caret."""
    assert diagnostic.loc is not None, diagnostic.message
    assert diagnostic.loc.file == FILE
    text = normalise_newlines(text)  # CR and CRLF end lines as LF does, in files and in text alike
    lines = text.split("\n")
    line, col = diagnostic.loc.line, diagnostic.loc.col
    assert 1 <= line <= len(lines), (line, len(lines), diagnostic.message)
    assert 1 <= col <= len(lines[line - 1].rstrip("\r")) + 1, (line, col, lines[line - 1], diagnostic.message)
    assert diagnostic.loc.length >= 1
    assert diagnostic.message and ("None" not in diagnostic.message or "None" in text), diagnostic.message
    rendered = diagnostic.render(text).split("\n")
    assert rendered[0] == f"{FILE}:{line}:{col}: {diagnostic.severity}: {diagnostic.message}"
    quoted, caret = rendered[1], rendered[2]
    assert quoted == "    " + lines[line - 1].rstrip("\r").expandtabs(1)
    assert caret.index("^") == 4 + col - 1


def check(text: str) -> None:
    """The front end's contract on any text."""
    try:
        networks = network_list_from_text(text, FILE)
    except CnncError as e:  # SpecError is a CnncError; anything else propagates and fails the test
        assert e.diagnostics
        assert all(d.severity == "error" for d in e.diagnostics)
        for diagnostic in e.diagnostics:
            assert_located(diagnostic, text)
            for note in diagnostic.notes:  # an instance of a block: located too
                assert note.severity == "note"
                assert_located(note, text)
        return
    assert networks
    for network in networks:
        for warning in network.warnings:
            assert warning.severity == "warning"
            assert_located(warning, text)
            for note in warning.notes:
                assert_located(note, text)
        for layer in network.layers:
            assert all(size >= 1 for size in layer.out_shape), layer
            assert prod(layer.out_shape) <= MAX_ELEMENTS
            assert layer.param_count >= 0 and layer.macs >= 0
        summary_table(network)
        network_record(network)


def check_cli(text: str) -> None:
    """`cnnc check` on the text as a file: exit 0 with a table, or exit 1 with FILE:LINE:COL on stderr."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, FILE)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["check", path])
    assert "Traceback" not in err.getvalue()
    if status == 0:
        assert "parameters:" in out.getvalue()
    else:
        assert status == 1
        assert re.match(re.escape(path) + r":\d+:\d+: error: ", err.getvalue()), err.getvalue()


# ---- mutations -----------------------------------------------------------------------------------------
def split_tokens(text: str) -> list[str]:
    return re.findall(r"[A-Za-z_][A-Za-z0-9_]*|[0-9.eE+-]+|\s+|#[^\n]*|.", text)


@st.composite
def mutated_spec(draw) -> str:
    text = draw(st.sampled_from(SPEC_TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        level = draw(st.sampled_from(["char", "token", "line"]))
        pieces = list(text) if level == "char" else split_tokens(text) if level == "token" else text.split("\n")
        if not pieces:
            break
        i = draw(st.integers(0, len(pieces) - 1))
        j = draw(st.integers(0, len(pieces) - 1))
        operation = draw(st.sampled_from(["delete", "duplicate", "swap", "insert"]))
        if operation == "delete":
            del pieces[i]
        elif operation == "duplicate":
            pieces.insert(i, pieces[i])
        elif operation == "swap":
            pieces[i], pieces[j] = pieces[j], pieces[i]
        else:
            pieces.insert(i, draw(st.sampled_from(TOKENS)))
        text = "\n".join(pieces) if level == "line" else "".join(pieces)
    return text


NUMBERS = st.one_of(st.integers(1, 12), st.integers(1, 12), st.integers(-2, 300), st.integers(-(10**12), 10**12),
                    st.floats(-1e6, 1e6, allow_nan=False).map(str),
                    st.sampled_from(["0", "(2, 3)", "(0, 1)", "(1, 100)", "1e400", "same", "valid", "1.0"]))


@st.composite
def renumbered_spec(draw) -> str:
    """A shipped spec with random values in one to three of its argument and dimension slots."""
    text = draw(st.sampled_from(SPEC_TEXTS))
    slots = list(re.finditer(r"(?<=[=\[, ])\d+(?:\.\d+)?(?=[,\])\s])", text))
    chosen = draw(st.lists(st.sampled_from(slots), min_size=1, max_size=3, unique_by=lambda m: m.start()))
    for match in sorted(chosen, key=lambda m: m.start(), reverse=True):
        text = text[: match.start()] + str(draw(NUMBERS)) + text[match.end():]
    return text


@st.composite
def random_graph_spec(draw) -> str:
    """A model (and sometimes a block) whose statements read random earlier, later or unknown names, with
    random merges, groups and batch norm settings: mostly valid graphs, some with located mistakes."""
    names = ["x"]
    lines = []
    block = draw(st.booleans())
    if block:
        lines += ["block unit(w, g=1) {", "    conv2d c(filters=w, kernel=3, padding=1, groups=g)", "    batchnorm bn",
                  f"    {draw(st.sampled_from(['add', 'concat']))} m(bn, in)", "}"]
    lines += ["model g {", f"    input x[{draw(st.sampled_from([2, 4]))}, {draw(st.integers(3, 6))}, 5]"]
    for k in range(draw(st.integers(1, 6))):
        name = f"l{k}"
        source = draw(st.sampled_from(names + ["nope", f"l{k + 1}", "in"]))
        kind = draw(st.sampled_from(["conv", "bn", "act", "merge", "block"] if block else ["conv", "bn", "act", "merge"]))
        if kind == "conv":
            groups, filters = draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([2, 4, 6]))
            lines.append(f"    conv2d {name}(filters={filters}, kernel={draw(st.sampled_from([1, 3]))}, padding=same, "
                         f"groups={groups}, from={source})")
        elif kind == "bn":
            lines.append(f"    batchnorm {name}(momentum={draw(st.sampled_from(['0.1', '1', '2']))}, from={source})")
        elif kind == "act":
            lines.append(f"    {draw(st.sampled_from(['relu6', 'silu', 'hardswish']))} {name}(from={source})")
        elif kind == "merge":
            operands = draw(st.lists(st.sampled_from(names + ["nope"]), min_size=1, max_size=3))
            lines.append(f"    {draw(st.sampled_from(['add', 'concat']))} {name}({', '.join(operands)})")
        else:
            lines.append(f"    unit {name}(w={draw(st.sampled_from([2, 4]))}, g={draw(st.sampled_from([1, 2]))}, "
                         f"from={source})")
        names.append(name)
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- the properties ------------------------------------------------------------------------------------
@settings(FUZZ, max_examples=200)
@given(random_graph_spec())
def test_random_graphs_check_and_every_checked_graph_runs(text):
    """The checker's contract, and more: a graph it accepts runs forward and backward on the NumPy backend
    in both modes with the shapes it promised."""
    import numpy as np

    from cnnc.backends.numpy_backend import NumpyModel

    check(text)
    try:
        networks = network_list_from_text(text, FILE)
    except CnncError:
        return
    for network in networks:
        m = NumpyModel(network, dtype="float64")
        x = np.random.default_rng(0).normal(size=(2, *network.input_shape))
        for train in (False, True):
            y = m.forward(x, train=train)
            assert y.shape == (2, *network.output_shape)
            assert m.backward(np.ones_like(y)).shape == x.shape



@FUZZ
@given(st.text(max_size=120))
def test_random_text(text):
    check(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_random_token_soup(text):
    check(text)


@FUZZ
@given(st.builds(lambda body: "model m {\n" + body + "\n}\n",
                 st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join)))
def test_token_soup_inside_a_model(text):
    check(text)


@settings(FUZZ, max_examples=600)
@given(mutated_spec())
def test_mutated_specs(text):
    check(text)


@settings(FUZZ, max_examples=600)
@given(renumbered_spec())
def test_specs_with_random_numbers(text):
    check(text)


@settings(FUZZ, max_examples=60)
@given(st.one_of(mutated_spec(), renumbered_spec(), st.text(max_size=60)))
def test_the_cli_never_shows_a_traceback(text):
    check_cli(text)
