"""Every editor feature on half-written text: random edits of real specs, then every handler at random
positions. None may raise, and every range it returns must lie in the document."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("pygls")

from lsprotocol import types  # noqa: E402

from cnnc.lsp import features  # noqa: E402
from cnnc.lsp.formatting import format_text  # noqa: E402

from conftest import ROOT
GRAPH_SPEC = """\
block basic(width, stride=1) {
    conv2d c1(filters=width, kernel=3, stride=stride, padding=1)
    add sum(c1, in)
    relu out
}
model net {
    input image[1, 28, 28]
    basic s1(width=8)
    conv2d proj(filters=8, kernel=1, from=image)  # a comment
    concat cat(s1, proj); flatten
    dense out(units=10)
}
"""
SEEDS = [p.read_text() for p in sorted((ROOT / "specs").glob("*.cnn"))] + [GRAPH_SPEC]
FRAGMENTS = ["(", ")", "[", "]", "{", "}", ",", "=", ";", "\n", " ", "#", "model m {", "input x[1, 8, 8]",
             "conv2d c(filters=2, kernel=3)", "from=", "add a(", "block b(w) {", "dense", "flatten", "relu",
             "padding=same", "kernel=(3, 5)", "basic s9(width=4, from=", "concat k(a, b)", "batchnorm",
             "groups=", "-1", "1e9", "é", "😀", "\t", "\r\n", "in", "c1", "x"]
URI = "file:///spec.cnn"


@st.composite
def edited_texts(draw) -> str:
    """A shipped spec after a few random deletions and insertions, as an editor sends while typing."""
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        insert = draw(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)))
        text = text[:start] + insert + text[end:]
    return text


def positions(text: str):
    lines = text.split("\n")
    def on_line(line: int):
        width = len(lines[min(line, len(lines) - 1)]) + 2  # a little past the end too
        return st.builds(types.Position, st.just(line), st.integers(0, width))

    return st.integers(0, len(lines)).flatmap(on_line)


def assert_in_document(text: str, span: types.Range) -> None:
    lines = text.split("\n")
    for point in (span.start, span.end):
        assert 0 <= point.line < len(lines) + 1
        assert point.character >= 0
    assert (span.start.line, span.start.character) <= (span.end.line, span.end.character)


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(st.data())
def test_no_handler_raises_on_edited_text_and_every_range_is_in_the_document(data):
    text = data.draw(edited_texts())
    doc = features.make_document(URI, text)
    at = data.draw(positions(text))
    for diagnostic in features.diagnostics(doc):
        assert_in_document(text, diagnostic.range)
    hover = features.hover(doc, at)
    if hover is not None:
        assert hover.contents.value and hover.range is not None
        assert_in_document(text, hover.range)
    for hint in features.inlay_hints(doc):
        assert hint.label.startswith("-> [")
    for lens in features.code_lenses(doc):
        assert_in_document(text, lens.range)
    assert all(item.label for item in features.completion(doc, at).items)
    for location in [features.definition(doc, at)] + features.references(doc, at):
        if location is not None:
            assert_in_document(text, location.range)
    for symbol in features.document_symbols(doc):
        assert_in_document(text, symbol.range)
        assert_in_document(text, symbol.selection_range)
    for action in features.code_actions(doc, types.Range(at, at)):
        assert action.edit.changes[URI]
    features.formatting(doc)


@PROPERTY_SETTINGS
@given(st.data())
def test_rename_either_edits_every_occurrence_or_is_refused_with_a_reason(data):
    text = data.draw(edited_texts())
    doc = features.make_document(URI, text)
    at = data.draw(positions(text))
    new_name = data.draw(st.sampled_from(["renamed", "c1", "conv2d", "1x", "", "image", "x y"]))
    target = features.prepare_rename(doc, at)
    try:
        edit = features.rename(doc, at, new_name)
    except features.RenameRefused as refusal:
        assert str(refusal)
        return
    assert target is not None
    assert all(e.new_text == new_name for e in edit.changes[URI])


@PROPERTY_SETTINGS
@given(edited_texts())
def test_formatting_is_idempotent_and_keeps_the_program(text):
    formatted = format_text(text)
    if formatted is None:
        return
    assert format_text(formatted) == formatted
    from cnnc.lsp.analysis import program_signature

    assert program_signature(formatted) == program_signature(text)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(edited_texts(), st.sampled_from([0, 0.001, 0.03])), min_size=1, max_size=6))
def test_after_a_burst_of_edits_the_last_diagnostics_published_are_the_last_texts(edits):
    """Typing: texts arrive with pauses shorter and longer than the quiet time; whatever the order in which
    their checks end, the client is left with the diagnostics of the last text, for its version."""
    import asyncio

    from cnnc.lsp.server import CnnLanguageServer

    server = CnnLanguageServer()
    published = []
    server.text_document_publish_diagnostics = published.append

    async def type_edits():
        for version, (text, pause) in enumerate(edits, start=1):
            server.text_changed(URI, version, text, delay=0.002)
            await asyncio.sleep(pause)
        await server.pending[URI]

    asyncio.run(type_edits())
    server.checker.shutdown(wait=True)
    last_text = edits[-1][0]
    assert published[-1].version == len(edits)
    assert published[-1].diagnostics == features.diagnostics(features.make_document(URI, last_text))
    assert [p.version for p in published] == sorted(p.version for p in published)


def test_the_edited_texts_include_the_graph_and_block_specs():
    for name in ("resnet8", "mobilenet_small", "inception_small"):
        assert (ROOT / "specs" / f"{name}.cnn").read_text() in SEEDS
