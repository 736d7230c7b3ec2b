"""Property tests: whatever text the checker is given, it answers with networks or located diagnostics.

Random text, random token soup, and mutations of the shipped specs (characters, tokens and lines deleted,
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
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.cli import main
from cnnc.diagnostics import CnncError, Diagnostic
from cnnc.frontend import network_list_from_text, normalise_newlines
from cnnc.shapes import KIND_ARGS, MAX_ELEMENTS
from cnnc.summary import network_record, summary_table

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.cnn"))
SPEC_TEXTS = [p.read_text() for p in SPECS]
FILE = "fuzz.cnn"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = sorted({"model", "input", "loss", "cross_entropy", "mse", "same", "valid", "true", "false", "none", "x", "c1"}
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
        return
    assert networks
    for network in networks:
        for warning in network.warnings:
            assert warning.severity == "warning"
            assert_located(warning, text)
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


# ---- the properties ------------------------------------------------------------------------------------
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
