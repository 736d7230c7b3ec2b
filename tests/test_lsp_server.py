"""`cnnc lsp` end to end: a real LSP client (pytest-lsp) starts the server over stdio and talks to it
as an editor would: open, edit, hover, inlay hints, completion, definition, rename, formatting."""
import asyncio
import sys
import time

import pytest

pytest.importorskip("pygls")
pytest_lsp = pytest.importorskip("pytest_lsp")

from lsprotocol import types  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one server for the module; each test opens its own file

BROKEN = """\
model net {
    input image[1, 28, 28]
    conv2d c1(filters=16, kernel=3, padding=1, activation=relu)
    maxpool2d p1(size=2)
    dense out(units=10)
    loss cross_entropy
}
"""
FIXED = BROKEN.replace("    dense out", "    flatten\n    dense out")


@pytest_lsp.fixture(scope="module", config=ClientServerConfig(server_command=[sys.executable, "-m", "cnnc", "lsp"]))
async def client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(capabilities=client_capabilities("neovim")))
    yield
    await lsp_client.shutdown_session()


class Editor:
    """A client with one open file: what an editor does, as calls."""

    def __init__(self, client: LanguageClient, uri: str):
        self.client, self.uri, self.version = client, uri, 0

    @property
    def document(self) -> types.TextDocumentIdentifier:
        return types.TextDocumentIdentifier(uri=self.uri)

    async def open(self, text: str) -> list[types.Diagnostic]:
        self.version = 1
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=self.uri, language_id="cnn", version=1, text=text)))
        return await self.diagnostics()

    async def change(self, text: str) -> list[types.Diagnostic]:
        self.version += 1
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
            [types.TextDocumentContentChangeWholeDocument(text=text)]))
        return await self.diagnostics()

    async def diagnostics(self, timeout: float = 30) -> list[types.Diagnostic]:
        """The diagnostics the server publishes for the current version."""
        deadline = time.monotonic() + timeout
        while True:
            params = await asyncio.wait_for(self.client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS),
                                            deadline - time.monotonic())
            if params.uri == self.uri and params.version == self.version:
                return list(params.diagnostics)

    async def hover(self, at: types.Position) -> types.Hover | None:
        return await self.client.text_document_hover_async(types.HoverParams(text_document=self.document, position=at))

    async def inlay_hints(self, lines: int) -> list[types.InlayHint]:
        whole = types.Range(types.Position(0, 0), types.Position(lines, 0))
        return await self.client.text_document_inlay_hint_async(
            types.InlayHintParams(text_document=self.document, range=whole))

    async def completion_labels(self, at: types.Position) -> list[str]:
        result = await self.client.text_document_completion_async(
            types.CompletionParams(text_document=self.document, position=at))
        return [item.label for item in result.items]

    async def definition(self, at: types.Position) -> types.Location:
        return await self.client.text_document_definition_async(
            types.DefinitionParams(text_document=self.document, position=at))

    async def references(self, at: types.Position) -> list[types.Location]:
        return await self.client.text_document_references_async(types.ReferenceParams(
            text_document=self.document, position=at, context=types.ReferenceContext(include_declaration=True)))

    async def rename(self, at: types.Position, new_name: str) -> types.WorkspaceEdit:
        return await self.client.text_document_rename_async(
            types.RenameParams(text_document=self.document, position=at, new_name=new_name))

    async def symbols(self) -> list[types.DocumentSymbol]:
        return await self.client.text_document_document_symbol_async(
            types.DocumentSymbolParams(text_document=self.document))

    async def format(self) -> list[types.TextEdit]:
        return await self.client.text_document_formatting_async(types.DocumentFormattingParams(
            text_document=self.document, options=types.FormattingOptions(tab_size=4, insert_spaces=True)))

    async def quick_fixes(self, diagnostic: types.Diagnostic) -> list[types.CodeAction]:
        return await self.client.text_document_code_action_async(types.CodeActionParams(
            text_document=self.document, range=diagnostic.range,
            context=types.CodeActionContext(diagnostics=[diagnostic])))


@pytest.fixture
def editor(client: LanguageClient, request) -> Editor:
    return Editor(client, f"file:///project/{request.node.name}.cnn")


def position(text: str, needle: str, offset: int = 0) -> types.Position:
    """The position of `needle` (plus `offset` characters) in `text`."""
    index = text.index(needle) + offset
    line = text.count("\n", 0, index)
    return types.Position(line=line, character=index - (text.rfind("\n", 0, index) + 1))


# ---- diagnostics ---------------------------------------------------------------------------------
async def test_an_opened_file_with_an_error_gets_it_at_the_layer_with_the_note(editor: Editor):
    (diagnostic,) = await editor.open(BROKEN)
    assert diagnostic.message == "dense 'out' needs a flat input, but 'p1' outputs [16, 14, 14]"
    assert diagnostic.severity == types.DiagnosticSeverity.Error
    assert diagnostic.range == types.Range(types.Position(4, 4), types.Position(4, 9))
    assert [r.message for r in diagnostic.related_information] == [
        "note: add `flatten` before 'out' (giving [3136]), or `global_avgpool` (giving [16])"]


async def test_editing_updates_the_diagnostics(editor: Editor):
    assert len(await editor.open(BROKEN)) == 1
    assert list(await editor.change(FIXED)) == []
    half_written = FIXED.replace("dense out(units=10)", "dense out(units=")
    (diagnostic,) = await editor.change(half_written)
    assert diagnostic.message == "unclosed '(': the argument list needs a closing ')' before end of line"
    assert diagnostic.range.start == types.Position(5, 20)


async def test_a_warning_arrives_as_a_warning(editor: Editor):
    text = FIXED.replace("dense out(units=10)", "dense out(units=10, activation=softmax)")
    (diagnostic,) = await editor.open(text)
    assert diagnostic.severity == types.DiagnosticSeverity.Warning
    assert "cross_entropy applies softmax itself" in diagnostic.message


# ---- hover and inlay hints ---------------------------------------------------------------------------
async def test_hover_on_a_layer_gives_shapes_parameters_macs_and_receptive_field(editor: Editor):
    await editor.open(FIXED)
    hover = await editor.hover(position(FIXED, "c1("))
    assert hover.contents.value.split("\n\n") == [
        "**conv2d c1** + relu", "[1, 28, 28] -> [16, 28, 28]", "parameters: 160 (weight [16, 1, 3, 3], bias [16])",
        "MACs: 112,896 per sample", "receptive field: 3x3"]


async def test_hover_on_an_argument_gives_its_meaning_and_default(editor: Editor):
    await editor.open(FIXED)
    hover = await editor.hover(position(FIXED, "padding"))
    assert hover.contents.value.startswith("**padding**: zeros added on each side")
    assert hover.contents.value.endswith("default: `0`")


async def test_inlay_hints_give_each_layer_its_output_shape_at_the_end_of_its_line(editor: Editor):
    await editor.open(FIXED)
    hints = await editor.inlay_hints(lines=9)
    lines = FIXED.split("\n")
    assert [(h.position.line, h.label) for h in hints] == [
        (2, "-> [16, 28, 28]"), (3, "-> [16, 14, 14]"), (4, "-> [3136]"), (5, "-> [10]")]
    assert all(h.position.character == len(lines[h.position.line]) for h in hints)


async def test_half_written_text_still_gets_hover_and_the_shapes_before_the_break(editor: Editor):
    half_written = FIXED.replace("dense out(units=10)", "dense out(units=")
    await editor.open(half_written)
    hints = await editor.inlay_hints(lines=9)
    assert [(h.position.line, h.label) for h in hints] == [(2, "-> [16, 28, 28]"), (3, "-> [16, 14, 14]"),
                                                           (4, "-> [3136]")]
    hover = await editor.hover(position(half_written, "p1("))
    assert "[16, 28, 28] -> [16, 14, 14]" in hover.contents.value


@pytest_lsp.fixture(scope="module", config=ClientServerConfig(server_command=[sys.executable, "-m", "cnnc", "lsp"]))
async def client_without_inlay_hints(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(capabilities=types.ClientCapabilities()))
    yield
    await lsp_client.shutdown_session()


async def test_a_client_without_inlay_hints_gets_the_shapes_as_code_lenses(client_without_inlay_hints, request):
    editor = Editor(client_without_inlay_hints, f"file:///project/{request.node.name}.cnn")
    await editor.open(FIXED)
    lenses = await editor.client.text_document_code_lens_async(types.CodeLensParams(text_document=editor.document))
    assert [(lens.range.start.line, lens.command.title) for lens in lenses] == [
        (2, "-> [16, 28, 28]"), (3, "-> [16, 14, 14]"), (4, "-> [3136]"), (5, "-> [10]")]


async def test_a_client_with_inlay_hints_gets_no_code_lenses(editor: Editor):
    await editor.open(FIXED)
    lenses = await editor.client.text_document_code_lens_async(types.CodeLensParams(text_document=editor.document))
    assert list(lenses) == []


# ---- completion ----------------------------------------------------------------------------------
async def test_completion_offers_layer_kinds_at_the_start_of_a_statement(editor: Editor):
    text = FIXED.replace("    flatten\n", "    fl\n")
    await editor.open(text)
    found = await editor.completion_labels(position(text, "    fl\n", 6))
    assert {"flatten", "conv2d", "dense", "maxpool2d", "input", "loss"} <= set(found)


async def test_completion_offers_the_arguments_of_the_kind_being_written(editor: Editor):
    text = FIXED.replace("maxpool2d p1(size=2)", "maxpool2d p1(size=2, ")
    await editor.open(text)
    assert await editor.completion_labels(position(text, "size=2, ", 8)) == ["stride", "padding", "ceil", "from"]


async def test_completion_offers_the_values_an_argument_takes(editor: Editor):
    text = FIXED.replace("activation=relu", "activation=")
    await editor.open(text)
    found = await editor.completion_labels(position(text, "activation=", 11))
    assert found == ["relu", "sigmoid", "tanh", "leaky_relu", "softmax", "relu6", "silu", "hardswish", "elu", "selu",
                     "hardsigmoid", "log_softmax", "none"]


async def test_completion_offers_earlier_layer_names_in_from_and_merges(editor: Editor):
    text = FIXED.replace("    flatten\n", "    add sum(c1, \n    conv2d proj(filters=4, kernel=1, from=\n")
    await editor.open(text)
    in_merge = await editor.completion_labels(position(text, "sum(c1, ", 8))
    in_from = await editor.completion_labels(position(text, "from=", 5))
    assert set(in_merge) == {"image", "c1", "p1"}
    assert set(in_from) == {"image", "c1", "p1", "sum"}


async def test_completion_offers_block_names_as_layer_kinds(editor: Editor):
    block = "block basic(width) {\n    conv2d c(filters=width, kernel=3)\n}\n"
    text = block + FIXED.replace("    flatten\n", "    bas\n    flatten\n")
    await editor.open(text)
    assert "basic" in await editor.completion_labels(position(text, "    bas\n", 7))


# ---- names ---------------------------------------------------------------------------------------
GRAPH = """\
model net {
    input image[1, 28, 28]
    conv2d c1(filters=8, kernel=3, padding=1)
    conv2d c2(filters=8, kernel=3, padding=1)
    add sum(c1, c2)
    conv2d proj(filters=8, kernel=1, from=c1)
}
"""


async def test_definition_of_a_name_in_from_and_in_a_merge_is_its_layer(editor: Editor):
    await editor.open(GRAPH)
    defined_at = types.Range(position(GRAPH, "c1("), position(GRAPH, "c1(", 2))
    for used in (position(GRAPH, "from=c1", 5), position(GRAPH, "sum(c1", 4)):
        found = await editor.definition(used)
        assert found.uri == editor.uri and found.range == defined_at


async def test_references_and_rename_cover_the_definition_and_every_use(editor: Editor):
    await editor.open(GRAPH)
    at = position(GRAPH, "c1(")
    found = await editor.references(at)
    assert sorted(r.range.start.line for r in found) == [2, 4, 5]
    edit = await editor.rename(at, "stem")
    assert sorted((e.range.start.line, e.range.start.character, e.new_text) for e in edit.changes[editor.uri]) == [
        (2, 11, "stem"), (4, 12, "stem"), (5, 42, "stem")]


async def test_rename_to_a_used_name_is_refused_with_a_reason(editor: Editor):
    await editor.open(GRAPH)
    with pytest.raises(Exception, match="'c2' is already used"):
        await editor.rename(position(GRAPH, "c1("), "c2")


async def test_document_symbols_outline_models_and_layers(editor: Editor):
    await editor.open(FIXED)
    (model,) = await editor.symbols()
    assert model.name == "net"
    assert [(c.name, c.detail) for c in model.children] == [
        ("image", "input"), ("c1", "conv2d -> [16, 28, 28]"), ("p1", "maxpool2d -> [16, 14, 14]"),
        ("flatten_1", "flatten -> [3136]"), ("out", "dense -> [10]")]


# ---- formatting and quick fixes --------------------------------------------------------------------
async def test_formatting_rewrites_the_document_in_the_canonical_layout(editor: Editor):
    messy = ("model net {\n  input image[1,28,28]\n conv2d c1( filters = 4 , kernel=3 )  # first\n"
             "  flatten;dense out(units=10) # last\n}")
    await editor.open(messy)
    (edit,) = await editor.format()
    assert edit.new_text == ("model net {\n    input image[1, 28, 28]\n    conv2d c1(filters=4, kernel=3)  # first\n"
                             "    flatten\n    dense out(units=10)             # last\n}\n")


async def test_quick_fix_inserts_flatten_before_a_dense_on_an_image(editor: Editor):
    (diagnostic,) = await editor.open(BROKEN)
    actions = await editor.quick_fixes(diagnostic)
    fix = next(a for a in actions if a.title == "insert `flatten` before this layer")
    (edit,) = fix.edit.changes[editor.uri]
    assert (edit.range.start.line, edit.new_text) == (4, "    flatten\n")


# ---- a graph and block spec (issue 14's language) ----------------------------------------------------
RESNET = """\
block basic(width, stride=1) {
    conv2d c1(filters=width, kernel=3, stride=stride, padding=1, bias=false)
    batchnorm bn1
    conv2d proj(filters=width, kernel=1, stride=stride, bias=false, from=in)
    add sum(bn1, proj)
    relu out
}
model resnet {
    input image[1, 28, 28]
    conv2d stem(filters=8, kernel=3, padding=1)
    basic s1(width=8)
    basic s2(width=16, stride=2, from=s1)
    conv2d side(filters=16, kernel=1, stride=2, from=stem)
    add both(s2, side)
    global_avgpool
    dense fc(units=10)
    loss cross_entropy
}
"""


async def test_graph_spec_diagnostics_note_the_instance_an_error_in_a_block_comes_from(editor: Editor):
    assert await editor.open(RESNET) == []
    broken = RESNET.replace("kernel=1, stride=stride,", "kernel=1,")
    (diagnostic,) = await editor.change(broken)
    assert diagnostic.message.startswith("add 's2.sum': add needs operands of one shape")
    assert diagnostic.range.start == position(broken, "proj)")
    instance = diagnostic.related_information[-1]
    assert instance.message == "note: in instance 's2' of block 'basic' with width=16, stride=2"
    assert instance.location.range.start == position(broken, "s2(")


async def test_graph_spec_hover_on_an_instance_and_on_a_merge(editor: Editor):
    await editor.open(RESNET)
    instance = (await editor.hover(position(RESNET, "s2("))).contents.value.split("\n\n")
    assert instance[:4] == ["**basic s2**: an instance of block basic", "[8, 28, 28] -> [16, 14, 14]",
                            "reads: s1.out [8, 28, 28]", "parameters: 1,312 in 5 layers"]
    assert "- `s2.proj` conv2d -> [16, 14, 14]" in instance[-1]
    merge = (await editor.hover(position(RESNET, "add both"))).contents.value.split("\n\n")
    assert merge[:3] == ["**add both**", "[16, 14, 14] -> [16, 14, 14]", "reads: s2.out [16, 14, 14], side [16, 14, 14]"]
    in_block = (await editor.hover(position(RESNET, "add sum"))).contents.value
    assert "- `s1.sum`: [8, 28, 28] -> [8, 28, 28]" in in_block and "- `s2.sum`: [16, 14, 14] -> [16, 14, 14]" in in_block


async def test_graph_spec_inlay_hints_give_instances_their_output_shape(editor: Editor):
    await editor.open(RESNET)
    hints = {h.position.line: h.label for h in await editor.inlay_hints(RESNET.count("\n") + 1)}
    assert hints == {9: "-> [8, 28, 28]", 10: "-> [8, 28, 28]", 11: "-> [16, 14, 14]", 12: "-> [16, 14, 14]",
                     13: "-> [16, 14, 14]", 14: "-> [16]", 15: "-> [10]"}


async def test_graph_spec_completion_in_from_and_in_a_merge(editor: Editor):
    text = RESNET.replace("add both(s2, side)", "add both(s2, ").replace("from=stem", "from=")
    await editor.open(text)
    assert await editor.completion_labels(position(text, "from=)", 5)) == ["image", "stem", "s1", "s2"]
    in_merge = await editor.completion_labels(position(text, "both(s2, ", 9))
    assert {"image", "stem", "s1", "s2", "side"} <= set(in_merge) and "in" not in in_merge
    in_block = await editor.completion_labels(position(text, "sum(bn1, ", 9))
    assert set(in_block) == {"in", "c1", "bn1", "proj"}
    assert "from" in await editor.completion_labels(position(text, "stride=2, ", 10))


async def test_graph_spec_definition_of_a_block_name_and_rename_of_a_merged_layer(editor: Editor):
    await editor.open(RESNET)
    found = await editor.definition(position(RESNET, "basic s2"))
    assert found.range == types.Range(position(RESNET, "basic("), position(RESNET, "basic(", 5))
    edit = await editor.rename(position(RESNET, "side("), "shortcut")
    assert sorted((e.range.start.line, e.new_text) for e in edit.changes[editor.uri]) == [
        (12, "shortcut"), (13, "shortcut")]
    edit = await editor.rename(position(RESNET, "proj)"), "shortcut")  # in a block: its own names only
    assert sorted(e.range.start.line for e in edit.changes[editor.uri]) == [3, 4]


# ---- a slow check never holds back the next keystroke ------------------------------------------------
def long_spec(name: str, layers: int = 2000) -> str:
    return (f"model {name} {{\n    input x[1, 8, 8]\n"
            + "".join(f"    conv2d c{i}(filters=1, kernel=1)\n" for i in range(layers)) + "}\n")


async def test_the_diagnostics_of_a_new_text_do_not_wait_for_a_slow_check_of_the_old_one(editor: Editor, client):
    alone = Editor(client, editor.uri.replace(".cnn", "-alone.cnn"))
    started = time.monotonic()
    assert await alone.open(long_spec("alone")) == []
    slow_check = time.monotonic() - started

    editor.version = 1
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=editor.uri, language_id="cnn", version=1, text=long_spec("typing"))))
    await asyncio.sleep(0.05)  # the long text's check is under way
    started = time.monotonic()
    (diagnostic,) = await editor.change(BROKEN)
    assert time.monotonic() - started < slow_check / 2
    assert diagnostic.message.startswith("dense 'out' needs a flat input")
    await asyncio.sleep(1.5 * slow_check)  # the old text's check ends: its (empty) diagnostics must not replace these
    assert [d.message for d in client.diagnostics[editor.uri]] == [diagnostic.message]
