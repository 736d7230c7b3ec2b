"""The editor features as plain functions of a document: text in, LSP types out.

The server (cnnc/lsp/server.py) only routes requests here. Every function takes a `Document` (the
text, its outline and its analysis) and LSP positions (0-based lines, UTF-16 columns), never raises
on any text, and returns None or an empty list when it has nothing to say.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from lsprotocol import types

from . import analysis as front
from .formatting import format_text
from .outline import BLOCK_INPUT, Outline, Scope, Statement, Symbol, Token, names_before, outline, symbol_at, symbols

SOURCE = "cnnc"
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class Document:
    uri: str
    text: str
    analysis: front.Analysis

    @cached_property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    @cached_property
    def outline(self) -> Outline:
        return outline(self.text)

    @cached_property
    def symbols(self) -> list[Symbol]:
        return symbols(self.outline)

    def line(self, number: int) -> str:
        return self.lines[number].rstrip("\r") if 0 <= number < len(self.lines) else ""

    # LSP counts columns in UTF-16 code units; the outline and the compiler count characters
    def position(self, line: int, col: int) -> types.Position:
        prefix = self.line(line)[:max(0, col)]
        units = len(prefix.encode("utf-16-le")) // 2 + max(0, col - len(prefix))  # past the end: as many more
        return types.Position(line=max(0, line), character=units)

    def column(self, position: types.Position) -> int:
        text, units, col = self.line(position.line), 0, 0
        while col < len(text) and units < position.character:
            units += 2 if ord(text[col]) > 0xFFFF else 1
            col += 1
        return col + max(0, position.character - units)

    def token_range(self, token: Token) -> types.Range:
        return types.Range(self.position(token.line, token.col), self.position(token.line, token.end))

    def location(self, token: Token) -> types.Location:
        return types.Location(uri=self.uri, range=self.token_range(token))


def make_document(uri: str, text: str, wanted=lambda: True) -> Document:
    """The document with its analysis, outline and names all computed (in the caller's thread).
    `wanted()` false cuts the analysis short (see analysis.analyse)."""
    doc = Document(uri, text, front.analyse(text, uri_to_file(uri), wanted))
    doc.symbols  # noqa: B018 - computes the outline and the names now, not on the server's event loop
    return doc


def uri_to_file(uri: str) -> str:
    """The file name diagnostics carry: the path of a file: URI, else the URI."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


# ---- diagnostics ---------------------------------------------------------------------------------
def diagnostics(doc: Document) -> list[types.Diagnostic]:
    return [_diagnostic(doc, d) for d in doc.analysis.diagnostics]


def _diagnostic(doc: Document, d) -> types.Diagnostic:
    span = _loc_range(doc, d.loc)
    related = []
    if d.hint:
        related.append(types.DiagnosticRelatedInformation(types.Location(uri=doc.uri, range=span), f"note: {d.hint}"))
    for note in getattr(d, "notes", ()):  # e.g. the block instance an error in a block's body comes from
        at = _loc_range(doc, note.loc) if note.loc is not None else span
        text = f"note: {note.message}" + (f"\n\nnote: {note.hint}" if note.hint else "")
        related.append(types.DiagnosticRelatedInformation(types.Location(uri=doc.uri, range=at), text))
    severity = types.DiagnosticSeverity.Error if d.severity == "error" else types.DiagnosticSeverity.Warning
    return types.Diagnostic(range=span, message=d.message, severity=severity, source=SOURCE,
                            related_information=related or None)


def _loc_range(doc: Document, loc) -> types.Range:
    if loc is None:
        return types.Range(types.Position(0, 0), types.Position(0, 0))
    line, col = loc.line - 1, loc.col - 1
    return types.Range(doc.position(line, col), doc.position(line, col + max(1, loc.length)))


# ---- hover ---------------------------------------------------------------------------------------
ARGUMENT_MEANINGS = {
    "filters": "output channels: how many kernels the convolution learns",
    "kernel": "the kernel size: an integer, or (height, width) for 2-D layers",
    "stride": "the step between windows: an integer, or (height, width)",
    "padding": "zeros added on each side: an integer, (height, width), (before, after) per axis as in "
               "((1, 2), (0, 1)), `same` (ceil(in / stride) outputs, TensorFlow's split) or `valid` (0)",
    "output_padding": "a transposed convolution's extra rows and columns after, smaller than the stride or dilation",
    "ceil": "pooling rounds the output size up (PyTorch's ceil_mode): `true` or `false`",
    "count_pad": "whether average pooling's divisor counts the padded cells: `true` or `false`",
    "alpha": "lrn: the scale of the sum of squares", "beta": "lrn: the exponent of the divisor",
    "k": "lrn: the constant added before the exponent, > 0",
    "dilation": "the spacing between kernel taps: an integer, or (height, width)",
    "bias": "whether the layer adds a learned bias: `true` or `false`",
    "activation": "an activation applied to the output: " + ", ".join(front.activations()),
    "slope": "the negative slope of leaky_relu",
    "size": "the pooling window: an integer, or (height, width); lrn: the channels in each window",
    "groups": "convolutions: channel groups (groups = channels is depthwise); channel_shuffle: the groups to interleave",
    "units": "the number of outputs",
    "rate": "the probability of dropping a value while training, in [0, 1)",
    "from": "the earlier output this layer reads instead of the previous statement's",
}
KIND_MEANINGS = {
    "conv1d": "1-D convolution: [C, L] -> [filters, L']", "conv2d": "2-D convolution: [C, H, W] -> [filters, H', W']",
    "maxpool1d": "1-D max pooling", "maxpool2d": "2-D max pooling", "avgpool1d": "1-D average pooling",
    "avgpool2d": "2-D average pooling", "global_avgpool": "the mean of each channel: [C, ...] -> [C]",
    "flatten": "[C, ...] -> [C x ...], row-major", "dense": "fully connected: [D] -> [units]",
    "dropout": "drops values at random while training", "relu": "max(0, x)", "sigmoid": "1 / (1 + e^-x)",
    "tanh": "hyperbolic tangent", "leaky_relu": "x, or slope * x below 0",
    "softmax": "normalises flat scores to probabilities",
    "input": "the model's input: [C, H, W], [C, L] or [D] per sample",
    "loss": "the training loss: cross_entropy, nll (after log_softmax) or mse",
    "add": "the elementwise sum of two or more earlier outputs of one shape: `add sum(a, b)`",
    "concat": "joins two or more earlier outputs on the channel axis: `concat cat(a, b)`",
    "batchnorm": "batch normalisation per channel (running statistics in inference)",
    "relu6": "min(max(x, 0), 6)", "silu": "x * sigmoid(x)", "hardswish": "x * relu6(x + 3) / 6",
    "elu": "x, or e^x - 1 below 0", "selu": "1.0507 * (x, or 1.6733 * (e^x - 1) below 0)",
    "hardsigmoid": "relu6(x + 3) / 6", "log_softmax": "log-probabilities of flat scores: x - log(sum(e^x))",
    "conv_transpose1d": "1-D transposed convolution: [C, L] -> [filters, L']",
    "conv_transpose2d": "2-D transposed convolution: [C, H, W] -> [filters, H', W']",
    "global_maxpool": "the maximum of each channel: [C, ...] -> [C]",
    "lrn": "local response normalisation across neighbouring channels",
    "channel_shuffle": "interleaves the channels of `groups` groups",
    "in": "inside a block: the instance's input",
}


def hover(doc: Document, position: types.Position) -> types.Hover | None:
    line, col = position.line, doc.column(position)
    found = doc.outline.statement_at(line, col)
    token = _token_at(doc.outline, line, col)
    if token is None:
        return None
    text = None
    if found is not None:
        text = _statement_hover(doc, found[0], found[1], token)
    if text is None:
        text = _scope_hover(doc, token)
    if text is None:
        return None
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text),
                       range=doc.token_range(token))


def _token_at(tree: Outline, line: int, col: int) -> Token | None:
    for token in tree.tokens:
        if token.kind in ("name", "number") and token.covers(line, col):
            return token
    return None


def _statement_hover(doc: Document, scope: Scope, statement: Statement, token: Token) -> str | None:
    for arg in statement.arguments:
        if arg.key is token:
            return _argument_hover(doc, statement.kind.text, token.text)
        if token in arg.values:
            return _value_hover(doc, scope, statement, arg, token)
    if token is statement.kind or token is statement.name:
        return _layer_hover(doc, scope, statement)
    return None


def _value_hover(doc: Document, scope: Scope, statement: Statement, arg, token: Token) -> str | None:
    """A layer's name: that layer; a word with a meaning: the word; else what the argument is."""
    referenced = _referenced_statement(doc, scope, token) if token.kind == "name" else None
    if referenced is not None:
        return _layer_hover(doc, scope, referenced)
    word = _word_hover(token.text) if token.kind == "name" else None
    if word is None and arg.key is not None:
        return _argument_hover(doc, statement.kind.text, arg.key.text)
    return word


def _argument_hover(doc: Document, kind: str, key: str) -> str | None:
    block = doc.outline.blocks().get(kind)
    if block is not None and key in block.param_names:
        return f"**{key}**: a parameter of block {kind}\n\ndefault: {_block_default(block, key)}"
    info = front.argument_info(kind, key)
    meaning = ARGUMENT_MEANINGS.get(key)
    if meaning is None and info is None:
        return None
    text = f"**{key}**: {meaning or info.type}"
    if info is not None:
        text += f"\n\ndefault: {_default_text(info, kind)}"
    return text


def _block_default(block: Scope, key: str) -> str:
    for param in block.params:
        if param.key is not None and param.key.text == key:
            return "`" + " ".join(t.text for t in param.values) + "`"
    return "none: required"


def _default_text(info: front.ArgumentInfo, kind: str) -> str:
    if info.required:
        return "none: required"
    if info.name == "from":
        return "the previous statement's output"
    if info.default is None:
        return "the window size (`size`)" if info.name == "stride" else "none"
    if isinstance(info.default, bool):
        return str(info.default).lower()
    return f"`{info.default}`"


WORD_MEANINGS = {"same": "padding that keeps the spatial size (stride 1)", "valid": "no padding",
                 "true": "yes", "false": "no", "none": "no activation", "relu": "max(0, x)",
                 "cross_entropy": "softmax and negative log-likelihood of the label, on flat class scores",
                 "mse": "mean squared error against the target"}


def _word_hover(word: str) -> str | None:
    meaning = WORD_MEANINGS.get(word) or KIND_MEANINGS.get(word)
    return f"**{word}**: {meaning}" if meaning else None


def _referenced_statement(doc: Document, scope: Scope, token: Token) -> Statement | None:
    found = symbol_at(doc.symbols, token.line, token.col)
    if found is None or found[0].kind not in ("layer", "input"):
        return None
    anchor = found[0].anchor
    return next((s for s in scope.statements if s.name is anchor or s.kind is anchor), None)


def _layer_hover(doc: Document, scope: Scope, statement: Statement) -> str:
    kind = statement.kind.text
    if kind == "input":
        shape = doc.analysis.inputs.get(scope.name.text if scope.name else "")
        return f"**input {statement.name.text if statement.name else ''}**" + (
            f": {front.fmt_shape(shape)}" if shape else "") + f"\n\n{KIND_MEANINGS['input']}"
    if kind == "loss":
        return f"**loss**: {KIND_MEANINGS['loss']}"
    title = " ".join(filter(None, [kind, statement.layer_name]))
    if scope.is_block:
        return _block_layer_hover(doc, scope, statement, title)
    if kind in doc.outline.blocks():
        return _instance_hover(doc, scope, statement, title)
    layer = doc.analysis.layer_at(statement.kind.line, statement.kind.col)
    if layer is None:
        meaning = KIND_MEANINGS.get(kind) or (f"an instance of block {kind}" if kind in doc.outline.blocks() else None)
        heading = f"**{title}**" + (f": {meaning}" if meaning else "")
        return heading + "\n\nshape unknown: fix the errors before this layer"
    return "\n\n".join([f"**{title}**" + (f" + {layer.activation}" if layer.activation else ""),
                        f"{front.fmt_shape(layer.in_shape)} -> {front.fmt_shape(layer.out_shape)}",
                        *_reads_lines(layer, statement), _parameters_line(layer), f"MACs: {layer.macs:,} per sample",
                        _receptive_field_line(layer)])


def _reads_lines(layer, statement: Statement) -> list[str]:
    """What a merge or a layer with `from=` reads, with the shapes (nothing for a plain chain)."""
    if len(layer.inputs) < 2 and statement.argument("from") is None:
        return []
    shapes = layer.in_shapes or (layer.in_shape,) * len(layer.inputs)
    return ["reads: " + ", ".join(f"{name} {front.fmt_shape(shape)}" for name, shape in zip(layer.inputs, shapes))]


def _instance_hover(doc: Document, scope: Scope, statement: Statement, title: str) -> str:
    """An instance: its input and output shapes, and its layers `s1.*` summed and listed."""
    layers = doc.analysis.instance(scope.name.text if scope.name else "", statement.layer_name or "")
    heading = f"**{title}**: an instance of block {statement.kind.text}"
    if not layers:
        return heading + "\n\nshape unknown: fix the errors before this layer"
    params, macs = sum(l.param_count for l in layers), sum(l.macs for l in layers)
    listing = "\n".join(f"- `{l.name}` {l.kind} -> {front.fmt_shape(l.out_shape)}" for l in layers)
    reads = ([f"reads: {layers[0].inputs[0]} {front.fmt_shape(layers[0].in_shape)}"]
             if statement.argument("from") is not None and layers[0].inputs else [])
    return "\n\n".join([heading, f"{front.fmt_shape(layers[0].in_shape)} -> {front.fmt_shape(layers[-1].out_shape)}",
                        *reads, f"parameters: {params:,} in {len(layers)} layers", f"MACs: {macs:,} per sample",
                        listing])


def _instance_paths(doc: Document, block: Scope, depth: int = 0) -> list[tuple[str, str]]:
    """(model, dotted path) of every instance of `block`: `p1` for `pair p1` in a model, `p1.u1` for
    `unit u1` in block pair. The depth bound stops a block that uses itself (an error, but text is text)."""
    if block.name is None or depth > 16:
        return []
    found = []
    for scope in doc.outline.scopes:
        for statement in scope.statements:
            if statement.kind.text != block.name.text or not statement.layer_name:
                continue
            if scope.is_block:
                found += [(model, f"{path}.{statement.layer_name}") for model, path in _instance_paths(doc, scope, depth + 1)]
            elif scope.name is not None:
                found.append((scope.name.text, statement.layer_name))
    return found


def _block_layer_hover(doc: Document, scope: Scope, statement: Statement, title: str) -> str:
    """A layer in a block body: what it is, and its shapes in each instance (they depend on the instance)."""
    kind = statement.kind.text
    meaning = KIND_MEANINGS.get(kind) or (f"an instance of block {kind}" if kind in doc.outline.blocks() else None)
    block = scope.name.text if scope.name else ""
    parts = [f"**{title}**" + (f": {meaning}" if meaning else "") + f" (in block {block})"]
    if kind in doc.outline.blocks():  # an instance inside a block: one per instance of the enclosing block
        nested = [(f"{path}.{statement.layer_name}", doc.analysis.instance(model, f"{path}.{statement.layer_name}"))
                  for model, path in _instance_paths(doc, scope)]
        nested = [(name, layers) for name, layers in nested if layers]
        if nested:
            parts.append("in each instance:\n" + "\n".join(
                f"- `{name}`: {front.fmt_shape(layers[0].in_shape)} -> {front.fmt_shape(layers[-1].out_shape)}, "
                f"parameters {sum(l.param_count for l in layers):,}, MACs {sum(l.macs for l in layers):,}"
                for name, layers in nested))
            return "\n\n".join(parts)
    layers = doc.analysis.layers_in_block_at(statement.kind.line, statement.kind.col)
    if layers:
        parts.append("in each instance:\n" + "\n".join(
            f"- `{l.name}`: {front.fmt_shape(l.in_shape)} -> {front.fmt_shape(l.out_shape)}, "
            f"parameters {l.param_count:,}, MACs {l.macs:,}" for l in layers))
    else:
        parts.append("shapes depend on the instance: none is known (no instance, or errors before it)")
    return "\n\n".join(parts)


def _receptive_field_line(layer) -> str:
    if layer.receptive_field is None:
        return "receptive field: none (the values are flat, not spatial)"
    return "receptive field: " + "x".join(map(str, layer.receptive_field))


def _parameters_line(layer) -> str:
    if not layer.params:
        return "parameters: 0"
    tensors = ", ".join(f"{p.name.rsplit('.', 1)[-1]} {front.fmt_shape(p.shape)}" for p in layer.params)
    return f"parameters: {layer.param_count:,} ({tensors})"


def _scope_hover(doc: Document, token: Token) -> str | None:
    for scope in doc.outline.scopes:
        if scope.name is token and not scope.is_block:
            network = doc.analysis.networks.get(token.text)
            if network is None:
                return f"**model {token.text}**: shapes unknown until its errors are fixed"
            return (f"**model {token.text}**: {front.fmt_shape(network.input_shape)} -> "
                    f"{front.fmt_shape(network.output_shape)}\n\nparameters: {network.param_count:,}\n\n"
                    f"MACs: {network.macs:,} per sample")
        if scope.name is token:
            return f"**block {token.text}**({', '.join(scope.param_names)})"
    return None


# ---- inlay hints (and code lenses for clients without them) -----------------------------------------
def inlay_hints(doc: Document, span: types.Range | None = None) -> list[types.InlayHint]:
    return [types.InlayHint(position=doc.position(statement.last.line, statement.last.end), label=f"-> {shape}",
                            kind=types.InlayHintKind.Type, padding_left=True)
            for statement, shape in _layer_shapes(doc, span)]


def code_lenses(doc: Document) -> list[types.CodeLens]:
    return [types.CodeLens(range=doc.token_range(statement.kind),
                           command=types.Command(title=f"-> {shape}", command=""))
            for statement, shape in _layer_shapes(doc, None)]


def _layer_shapes(doc: Document, span: types.Range | None) -> list[tuple[Statement, str]]:
    found = []
    for scope in doc.outline.scopes:
        for statement in scope.statements:
            if span is not None and not span.start.line <= statement.kind.line <= span.end.line:
                continue
            shape = _out_shape(doc, scope, statement)
            if shape is not None and statement.last is not None:
                found.append((statement, front.fmt_shape(shape)))
    return found


def _out_shape(doc: Document, scope: Scope, statement: Statement | None):
    """A model-level layer's or instance's output shape (None in a block body or when unknown)."""
    if statement is None or not statement.is_layer or scope.is_block:
        return None
    if statement.kind.text in doc.outline.blocks():
        layers = doc.analysis.instance(scope.name.text if scope.name else "", statement.layer_name or "")
        return layers[-1].out_shape if layers else None
    layer = doc.analysis.layer_at(statement.kind.line, statement.kind.col)
    return layer.out_shape if layer is not None else None


# ---- completion ----------------------------------------------------------------------------------
def completion(doc: Document, position: types.Position) -> types.CompletionList:
    items = _completion_items(doc, position.line, doc.column(position))
    return types.CompletionList(is_incomplete=False, items=items)


def _completion_items(doc: Document, line: int, col: int) -> list[types.CompletionItem]:
    before = doc.line(line)[:col]
    if "#" in before:
        return []
    scope = doc.outline.scope_at(line)
    statement_text = re.split(r"[;{]", before)[-1]
    if scope is None or (scope.keyword.line == line and "{" not in before):
        return _keywords(("model", "block")) if not statement_text.strip() or _typing_first_word(statement_text) else []
    inside = _open_parenthesis(statement_text)
    if inside is not None:
        return _argument_items(doc, scope, line, statement_text[:inside], statement_text[inside + 1:])
    words = statement_text.split()
    if not words or _typing_first_word(statement_text):
        return _kind_items(doc)
    if words[0] == "loss" and (len(words) == 1 or not statement_text.endswith(" ")):
        return [_item(name, types.CompletionItemKind.EnumMember, "loss") for name in front.losses()]
    return []


def _typing_first_word(statement_text: str) -> bool:
    return re.fullmatch(r"\s*[A-Za-z_][A-Za-z0-9_]*", statement_text) is not None


def _open_parenthesis(text: str) -> int | None:
    """Where the argument list still open at the end of `text` starts, if one is."""
    depth, start = 0, None
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth == 1:
                start = i
        elif char == ")":
            depth = max(0, depth - 1)
    return start if depth >= 1 else None


def _item(label: str, kind, detail: str | None = None, sort: str | None = None) -> types.CompletionItem:
    return types.CompletionItem(label=label, kind=kind, detail=detail, sort_text=sort)


def _keywords(words) -> list[types.CompletionItem]:
    return [_item(word, types.CompletionItemKind.Keyword) for word in words]


def _kind_items(doc: Document) -> list[types.CompletionItem]:
    items = [_item(kind, types.CompletionItemKind.Class, KIND_MEANINGS.get(kind)) for kind in front.layer_kinds()]
    items += [_item(name, types.CompletionItemKind.Module, "block") for name in doc.outline.blocks()]
    return items + _keywords(("input", "loss"))


def _argument_items(doc: Document, scope: Scope, line: int, head: str, inside: str) -> list[types.CompletionItem]:
    """Inside `KIND NAME(...`: argument names, values after `key=`, earlier names for merges and `from=`."""
    if "(" in inside:  # inside a pair: numbers only
        return []
    current = inside.split(",")[-1]
    words = head.split()
    kind = words[0] if words else ""
    if "=" in current:
        return _value_items(doc, scope, line, kind, current.split("=")[0].strip())
    if kind in front.MERGE_KINDS:
        return _name_items(doc, scope, line)
    given = {part.split("=")[0].strip() for part in inside.split(",")[:-1]}
    blocks = doc.outline.blocks()
    if kind in blocks:
        items = [_item(name, types.CompletionItemKind.Property, f"parameter of block {kind}")
                 for name in blocks[kind].param_names if name not in given]
        return items + ([_item("from", types.CompletionItemKind.Property, ARGUMENT_MEANINGS["from"])]
                        if "from" not in given else [])
    return [_item(a.name, types.CompletionItemKind.Property, ARGUMENT_MEANINGS.get(a.name))
            for a in front.arguments_of(kind) if a.name not in given]


def _value_items(doc: Document, scope: Scope, line: int, kind: str, key: str) -> list[types.CompletionItem]:
    if key == "from":
        return _name_items(doc, scope, line)
    info = front.argument_info(kind, key)
    words = {"activation": front.activations(), "padding": ("same", "valid"), "bool": ("true", "false")}
    choices = words.get(info.type, ()) if info else ()
    items = [_item(word, types.CompletionItemKind.EnumMember, WORD_MEANINGS.get(word)) for word in choices]
    if scope.is_block:  # a block's parameters stand for values
        items += [_item(name, types.CompletionItemKind.Variable, "block parameter") for name in scope.param_names]
    return items


def _name_items(doc: Document, scope: Scope, line: int) -> list[types.CompletionItem]:
    items = []
    for order, (name, statement) in enumerate(names_before(doc.outline, scope, line)):
        shape = _out_shape(doc, scope, statement) if statement is not None and statement.is_layer else None
        if statement is not None and statement.kind.text == "input":
            shape = doc.analysis.inputs.get(scope.name.text if scope.name else "")
        detail = front.fmt_shape(shape) if shape else ("the block's input" if statement is None else None)
        items.append(_item(name, types.CompletionItemKind.Variable, detail, sort=f"{9999 - order:04d}"))
    return items


# ---- names: definition, references, rename, symbols -------------------------------------------------
def definition(doc: Document, position: types.Position) -> types.Location | None:
    line, col = position.line, doc.column(position)
    found = symbol_at(doc.symbols, line, col)
    if found is not None:
        return doc.location(found[0].anchor)
    token, scope = _token_at(doc.outline, line, col), doc.outline.scope_at(line)
    if token is not None and token.text == BLOCK_INPUT and scope is not None and scope.is_block and scope.name:
        return doc.location(scope.name)  # `in`: the input of the block being defined
    return None


def references(doc: Document, position: types.Position, include_declaration: bool = True) -> list[types.Location]:
    found = symbol_at(doc.symbols, position.line, doc.column(position))
    if found is None:
        return _block_input_references(doc, position.line, doc.column(position))
    symbol = found[0]
    tokens = symbol.occurrences if include_declaration else symbol.uses
    return [doc.location(token) for token in tokens]


def _block_input_references(doc: Document, line: int, col: int) -> list[types.Location]:
    """`in` under the cursor in a block: every `in` read in that block (from= and merge operands)."""
    token, scope = _token_at(doc.outline, line, col), doc.outline.scope_at(line)
    if token is None or token.text != BLOCK_INPUT or scope is None or not scope.is_block:
        return []
    return [doc.location(t) for statement in scope.statements for arg in statement.arguments
            if arg.key is None or arg.key.text == "from" for t in arg.values if t.text == BLOCK_INPUT]


class RenameRefused(ValueError):
    """A rename that would break the file or that names nothing; the message says why."""


def prepare_rename(doc: Document, position: types.Position) -> types.Range | None:
    found = symbol_at(doc.symbols, position.line, doc.column(position))
    if found is None or found[0].definition is None:
        return None
    return doc.token_range(found[1])


def rename(doc: Document, position: types.Position, new_name: str) -> types.WorkspaceEdit:
    found = symbol_at(doc.symbols, position.line, doc.column(position))
    if found is None:
        raise RenameRefused("nothing to rename here: place the cursor on a layer, block or model name")
    symbol = found[0]
    if symbol.definition is None:
        raise RenameRefused(f"'{symbol.name}' is named automatically: name the layer first, e.g. "
                            f"`{symbol.anchor.text} {symbol.name}`")
    _check_new_name(doc, symbol, new_name)
    edits = [types.TextEdit(range=doc.token_range(token), new_text=new_name) for token in symbol.occurrences]
    return types.WorkspaceEdit(changes={doc.uri: edits})


def _check_new_name(doc: Document, symbol: Symbol, new_name: str) -> None:
    if not NAME_PATTERN.match(new_name):
        raise RenameRefused(f"'{new_name}' is not a name: letters, digits and '_', not starting with a digit")
    if new_name in front.reserved_words():
        raise RenameRefused(f"'{new_name}' is a reserved word (a layer kind or keyword)")
    if new_name == symbol.name:
        return
    rivals = [s for s in doc.symbols if s.name == new_name and
              (s.scope is symbol.scope if symbol.scope is not None else s.kind == symbol.kind)]
    if rivals:
        raise RenameRefused(f"'{new_name}' is already used (line {rivals[0].anchor.line + 1})")


def document_symbols(doc: Document) -> list[types.DocumentSymbol]:
    return [_scope_symbol(doc, scope) for scope in doc.outline.scopes if scope.name is not None]


def _scope_symbol(doc: Document, scope: Scope) -> types.DocumentSymbol:
    end_line = scope.end_line if scope.end_line is not None else doc.outline.last_line
    span = types.Range(doc.position(scope.keyword.line, scope.keyword.col),
                       doc.position(end_line, len(doc.line(end_line))))
    children = [_statement_symbol(doc, scope, s) for s in scope.statements if s.kind.text != "loss" and
                (s.is_layer or s.name is not None)]
    kind = types.SymbolKind.Function if scope.is_block else types.SymbolKind.Module
    return types.DocumentSymbol(name=scope.name.text, kind=kind, range=span,
                                selection_range=doc.token_range(scope.name),
                                detail=scope.keyword.text, children=children)


def _statement_symbol(doc: Document, scope: Scope, statement: Statement) -> types.DocumentSymbol:
    last = statement.last or statement.kind
    span = types.Range(doc.position(statement.kind.line, statement.kind.col), doc.position(last.line, last.end))
    shape = _out_shape(doc, scope, statement)
    detail = statement.kind.text + (f" -> {front.fmt_shape(shape)}" if shape else "")
    name = statement.name.text if statement.kind.text == "input" else statement.layer_name
    kind = (types.SymbolKind.Variable if statement.kind.text == "input" else
            types.SymbolKind.Object if statement.kind.text in doc.outline.blocks() else types.SymbolKind.Field)
    return types.DocumentSymbol(name=name, kind=kind, range=span,
                                selection_range=doc.token_range(statement.name or statement.kind),
                                detail=detail)


# ---- formatting ----------------------------------------------------------------------------------
def formatting(doc: Document) -> list[types.TextEdit]:
    formatted = format_text(doc.text)
    if formatted is None or formatted == doc.text:
        return []
    last = len(doc.lines) - 1
    whole = types.Range(types.Position(0, 0), doc.position(last, len(doc.lines[last])))
    return [types.TextEdit(range=whole, new_text=formatted)]


# ---- quick fixes ---------------------------------------------------------------------------------
def code_actions(doc: Document, span: types.Range) -> list[types.CodeAction]:
    actions = []
    for d in doc.analysis.diagnostics:
        if d.loc is None or not span.start.line <= d.loc.line - 1 <= span.end.line:
            continue
        for title, edits in _fixes(doc, d):
            actions.append(types.CodeAction(title=title, kind=types.CodeActionKind.QuickFix,
                                            diagnostics=[_diagnostic(doc, d)],
                                            edit=types.WorkspaceEdit(changes={doc.uri: edits})))
    return actions


def _fixes(doc: Document, d) -> list[tuple[str, list[types.TextEdit]]]:
    """(title, edits) for each fix the diagnostic's message or note spells out."""
    fixes = _did_you_mean_fix(doc, d) + _closing_fix(doc, d)
    found = doc.outline.statement_at(d.loc.line - 1, d.loc.col - 1)
    if found is not None:
        text = f"{d.message} {d.hint or ''}"
        for fixer in (_insert_layer_fix, _padding_fix, _written_value_fix, _missing_argument_fix):
            fixes += fixer(doc, found[1], text)
    return fixes


Fixes = list[tuple[str, list[types.TextEdit]]]


def _did_you_mean_fix(doc: Document, d) -> Fixes:
    close = re.search(r"did you mean '([A-Za-z_][A-Za-z0-9_]*)'\?", d.message)
    if not close:
        return []
    return [(f"change to '{close.group(1)}'", [types.TextEdit(_loc_range(doc, d.loc), close.group(1))])]


def _closing_fix(doc: Document, d) -> Fixes:
    """"close the argument list with ')'": the bracket where it is missing ('}' on a line of its own)."""
    closing = re.search(r"close the (.+?) with '(.)'", d.hint or "")
    if not closing:
        return []
    char, line, col = closing.group(2), d.loc.line - 1, d.loc.col - 1
    text = char
    if char == "}":
        at_next_model = doc.line(line)[col:].startswith("model")
        text, col = ("}\n", 0) if at_next_model else ("\n}", col)
    at = doc.position(line, col)
    return [(f"close the {closing.group(1)} with '{char}'", [types.TextEdit(types.Range(at, at), text)])]


def _insert_layer_fix(doc: Document, statement: Statement, text: str) -> Fixes:
    return [(f"insert `{layer}` before this layer", [_insert_line_before(doc, statement, layer)])
            for layer in ("flatten", "global_avgpool") if f"`{layer}` before" in text or f"`{layer}` (giving" in text]


def _padding_fix(doc: Document, statement: Statement, text: str) -> Fixes:
    padding = re.search(r"\(padding=(\d+)", text)
    if not padding:
        return []
    return [(f"use padding={padding.group(1)}", [_set_argument(doc, statement, "padding", padding.group(1))])]


def _written_value_fix(doc: Document, statement: Statement, text: str) -> Fixes:
    written = re.search(r"write ([a-z_]+)=(\d+)\b", text)
    if not written:
        return []
    key, value = written.groups()
    return [(f"write {key}={value}", [_set_argument(doc, statement, key, value)])]


def _missing_argument_fix(doc: Document, statement: Statement, text: str) -> Fixes:
    example = re.search(r"add it, e\.g\. [a-z0-9_]+\(([a-z_]+)=(\d+)\)", text)
    if not example:
        return []
    key, value = example.groups()
    return [(f"add {key}={value}", [_set_argument(doc, statement, key, value)])]


def _insert_line_before(doc: Document, statement: Statement, text: str) -> types.TextEdit:
    line = statement.kind.line
    indent = re.match(r"[ \t]*", doc.line(line)).group()
    start = types.Position(line, 0)
    return types.TextEdit(types.Range(start, start), f"{indent}{text}\n")


def _set_argument(doc: Document, statement: Statement, key: str, value: str) -> types.TextEdit:
    """Replace the argument's value, or add the argument at the end of the list (opening one if needed)."""
    arg = statement.argument(key)
    if arg is not None and arg.values:
        first, last = arg.values[0], arg.values[-1]
        span = types.Range(doc.position(first.line, first.col), doc.position(last.line, last.end))
        return types.TextEdit(span, value)
    last = statement.last or statement.kind
    if last.text == ")":
        at = doc.position(last.line, last.col)
        separator = ", " if statement.arguments else ""
        return types.TextEdit(types.Range(at, at), f"{separator}{key}={value}")
    at = doc.position(last.line, last.end)
    return types.TextEdit(types.Range(at, at), f"({key}={value})")
