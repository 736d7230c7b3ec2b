"""A tolerant outline of .cnn text for the editor: scopes (models, blocks), statements, names and uses.

The compiler's parser (cnnc/syntax.py) rejects a file at its first syntax error; an editor's text is
half-written most of the time. This outline is built from a small lexer that never fails: a broken
statement only loses that statement. It knows the names the language defines and uses:

- a model or block: `model NAME {`, `block NAME(param, param=default) {`
- a layer: `KIND [NAME] [(...)]`, named `KIND_k` when unnamed (the k-th layer of that kind in its
  scope, as cnnc/shapes.py names it); the input: `input [NAME][dims]`
- uses of a layer: `from=NAME`, and the positional operands of a merge, `add sum(a, b)`
- uses of a block: a statement whose kind is a block's name; uses of a block parameter: a word value
  naming it inside the block

Lines and columns count from 0 and in characters (code points), as the tokens are found in the text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r"""
    (?P<comment>\#[^\n]*)
  | (?P<newline>\r?\n)
  | (?P<space>[ \t\ufeff]+)
  | (?P<number>[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?[0-9]+[eE][+-]?[0-9]+|[+-]?[0-9]+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}()\[\],=;.])
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)

SCOPE_KEYWORDS = ("model", "block")
BLOCK_INPUT = "in"  # inside a block, the block's input (issue 14)


@dataclass(frozen=True)
class Token:
    kind: str  # comment, newline, number, name, punct, other (spaces are dropped)
    text: str
    line: int
    col: int

    @property
    def end(self) -> int:
        return self.col + len(self.text)

    def covers(self, line: int, col: int) -> bool:
        """True when the position is on the token or just after it (where a cursor ends a word)."""
        return line == self.line and self.col <= col <= self.end


def tokenize(text: str) -> list[Token]:
    """Every token but spaces, with its line and column; never fails (an unknown character is `other`)."""
    tokens, line, line_start = [], 0, 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind != "space":
            tokens.append(Token(kind, match.group(), line, match.start() - line_start))
        if kind == "newline":
            line, line_start = line + 1, match.end()
    return tokens


@dataclass
class Argument:
    key: Token | None  # None for a positional operand (a merge's `a` in `add s(a, b)`)
    values: list[Token]


@dataclass
class Statement:
    kind: Token  # the first word: a layer kind, `input`, `loss` or a block's name
    name: Token | None
    arguments: list[Argument] = field(default_factory=list)
    last: Token | None = None  # the statement's last code token
    implicit_name: str | None = None  # `conv2d_2` for an unnamed layer

    @property
    def is_layer(self) -> bool:
        return self.kind.text not in ("input", "loss")

    @property
    def layer_name(self) -> str | None:
        return self.name.text if self.name is not None else self.implicit_name

    def argument(self, key: str) -> Argument | None:
        return next((a for a in self.arguments if a.key is not None and a.key.text == key), None)


@dataclass
class Scope:
    keyword: Token  # `model` or `block`
    name: Token | None
    params: list[Argument] = field(default_factory=list)  # a block's parameters
    statements: list[Statement] = field(default_factory=list)
    end_line: int | None = None  # the line of the closing '}' (None while unclosed)

    @property
    def is_block(self) -> bool:
        return self.keyword.text == "block"

    @property
    def param_tokens(self) -> list[Token]:
        """The names of a block's parameters: `width` in `block basic(width, stride=1)`."""
        return [p.key if p.key is not None else p.values[0] for p in self.params
                if p.key is not None or _one_name(p.values)]

    @property
    def param_names(self) -> list[str]:
        return [token.text for token in self.param_tokens]

    def contains_line(self, line: int, last_line: int) -> bool:
        end = self.end_line if self.end_line is not None else last_line
        return self.keyword.line <= line <= end


@dataclass
class Outline:
    tokens: list[Token]
    scopes: list[Scope]
    last_line: int

    def scope_at(self, line: int) -> Scope | None:
        found = [s for s in self.scopes if s.contains_line(line, self.last_line)]
        return found[-1] if found else None

    def blocks(self) -> dict[str, Scope]:
        return {s.name.text: s for s in self.scopes if s.is_block and s.name is not None}

    def statement_at(self, line: int, col: int) -> tuple[Scope, Statement] | None:
        """The statement whose text covers the position (from its kind to its last token)."""
        scope = self.scope_at(line)
        for statement in scope.statements if scope else ():
            last = statement.last or statement.kind
            starts = (statement.kind.line, statement.kind.col) <= (line, col)
            if starts and (line, col) <= (last.line, last.end):
                return scope, statement
        return None


def outline(text: str) -> Outline:
    tokens = tokenize(text)
    builder = _Builder([t for t in tokens if t.kind != "comment"])
    scopes = builder.scopes()
    last_line = tokens[-1].line if tokens else 0
    return Outline(tokens, scopes, last_line)


class _Builder:
    """One pass over the code tokens; a statement ends at a newline, ';' or '}'."""

    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def at(self, *texts: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token is not None and token.kind == "punct" and token.text in texts

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def scopes(self) -> list[Scope]:
        scopes: list[Scope] = []
        current: Scope | None = None
        while self.peek() is not None:
            token = self.peek()
            if token.kind in ("newline",) or self.at(";"):
                self.take()
            elif self.at("}"):
                self.take()
                if current is not None:
                    current.end_line, current = token.line, None
            elif token.kind == "name" and token.text in SCOPE_KEYWORDS and self._opens_scope():
                if current is not None:  # the previous scope was never closed: it ends here
                    current.end_line = token.line - 1
                current = self._scope_header()
                scopes.append(current)
            elif current is not None and token.kind == "name":
                current.statements.append(self._statement())
            else:
                self._skip_statement()
        for scope in scopes:
            _name_unnamed_layers(scope)
        return scopes

    def _opens_scope(self) -> bool:
        """`model NAME` or `block NAME` at the start of a statement (not a layer named `model`)."""
        following = self.peek(1)
        return following is not None and (following.kind == "name" or self.at("{", offset=1))

    def _scope_header(self) -> Scope:
        keyword = self.take()
        name = self.take() if self.peek() is not None and self.peek().kind == "name" else None
        scope = Scope(keyword, name)
        if self.at("("):
            scope.params = self._arguments()
        while self.peek() is not None and not self.at("{", "}") and self.peek().kind != "newline":
            self.take()
        if self.at("{"):
            self.take()
        return scope

    def _statement(self) -> Statement:
        kind = self.take()
        statement = Statement(kind, None, last=kind)
        if self.peek() is not None and self.peek().kind == "name" and kind.text != "loss":
            statement.name = statement.last = self.take()
        if kind.text == "loss" and self.peek() is not None and self.peek().kind == "name":
            statement.arguments = [Argument(None, [self.peek()])]
            statement.last = self.take()
        if self.at("("):
            start = self.i
            statement.arguments = self._arguments()
            statement.last = self.tokens[max(start, self.i - 1)]
        while not self._at_statement_end():
            statement.last = self.take()
        return statement

    def _arguments(self) -> list[Argument]:
        """`(key=value, operand, key=(a, b))` up to the matching ')' or the end of the statement."""
        self.take()  # '('
        arguments, current, depth = [], [], 0
        while not self._at_statement_end():
            token = self.take()
            if token.text == "(":
                depth += 1
            elif token.text == ")":
                if depth == 0:
                    break
                depth -= 1
            if token.text == "," and depth == 0:
                arguments.append(_argument(current))
                current = []
            else:
                current.append(token)
        if current:
            arguments.append(_argument(current))
        return arguments

    def _at_statement_end(self) -> bool:
        token = self.peek()
        return token is None or token.kind == "newline" or self.at(";", "}")

    def _skip_statement(self) -> None:
        self.take()
        while not self._at_statement_end():
            self.take()


def _argument(tokens: list[Token]) -> Argument:
    if len(tokens) >= 2 and tokens[0].kind == "name" and tokens[1].text == "=":
        return Argument(tokens[0], tokens[2:])
    if len(tokens) == 1 and tokens[0].kind == "name" and tokens[0].text == "=":
        return Argument(None, [])
    return Argument(None, tokens)


def _name_unnamed_layers(scope: Scope) -> None:
    counts: dict[str, int] = {}
    for statement in scope.statements:
        if statement.is_layer:
            counts[statement.kind.text] = counts.get(statement.kind.text, 0) + 1
            if statement.name is None:
                statement.implicit_name = f"{statement.kind.text}_{counts[statement.kind.text]}"


# ---- names: where each is defined and used ---------------------------------------------------------
@dataclass
class Symbol:
    """A name and its occurrences. kind: model, block, param, input or layer. `definition` is None for
    a layer named automatically (its kind token stands in as `anchor`)."""

    name: str
    kind: str
    definition: Token | None
    anchor: Token
    scope: Scope | None
    uses: list[Token] = field(default_factory=list)

    @property
    def occurrences(self) -> list[Token]:
        return ([self.definition] if self.definition else []) + self.uses


def symbols(tree: Outline) -> list[Symbol]:
    """Every model, block, block parameter, input and layer, with its uses."""
    blocks = {}
    found: list[Symbol] = []
    for scope in tree.scopes:
        if scope.name is not None:
            symbol = Symbol(scope.name.text, scope.keyword.text, scope.name, scope.name, None)
            found.append(symbol)
            if scope.is_block:
                blocks.setdefault(scope.name.text, symbol)
    for scope in tree.scopes:
        found += _scope_symbols(scope, blocks)
    return found


def _scope_symbols(scope: Scope, blocks: dict[str, Symbol]) -> list[Symbol]:
    names: dict[str, Symbol] = {}  # layers and the input, as defined so far (uses must come later)
    param_symbols: dict[str, Symbol] = {}
    for token in scope.param_tokens:
        param_symbols.setdefault(token.text, Symbol(token.text, "param", token, token, scope))
    found = list(param_symbols.values())
    for statement in scope.statements:
        if statement.kind.text in blocks:
            blocks[statement.kind.text].uses.append(statement.kind)
        for token, is_name_use in _value_words(statement):
            target = names.get(token.text) if is_name_use else None
            target = target or param_symbols.get(token.text)
            if target is not None:
                target.uses.append(token)
        symbol = _defined_by(statement, scope)
        if symbol is not None and symbol.name not in names:
            names[symbol.name] = symbol
            found.append(symbol)
    return found


def _one_name(tokens: list[Token]) -> bool:
    return len(tokens) == 1 and tokens[0].kind == "name"


def _defined_by(statement: Statement, scope: Scope) -> Symbol | None:
    if statement.kind.text == "input":
        return Symbol(statement.name.text, "input", statement.name, statement.name, scope) if statement.name else None
    if not statement.is_layer or statement.layer_name is None:
        return None
    return Symbol(statement.layer_name, "layer", statement.name, statement.name or statement.kind, scope)


def _value_words(statement: Statement) -> list[tuple[Token, bool]]:
    """(word, names a layer?) for each word value: `from=` values and merge operands name layers; other
    argument values may name a block parameter."""
    words = []
    if not statement.is_layer:
        return words
    for arg in statement.arguments:
        names_layer = arg.key is None or arg.key.text == "from"
        words += [(t, names_layer) for t in arg.values if t.kind == "name"]
    return words


def symbol_at(all_symbols: list[Symbol], line: int, col: int) -> tuple[Symbol, Token] | None:
    """The symbol with an occurrence (or, for an unnamed layer, its kind word) under the position."""
    for symbol in all_symbols:
        for token in symbol.occurrences:
            if token.covers(line, col):
                return symbol, token
    for symbol in all_symbols:
        if symbol.definition is None and symbol.anchor.covers(line, col):
            return symbol, symbol.anchor
    return None


def names_before(tree: Outline, scope: Scope, line: int) -> list[tuple[str, Statement | None]]:
    """The names a `from=` or merge on `line` may use: the input, earlier layers, and `in` in a block."""
    found: list[tuple[str, Statement | None]] = [(BLOCK_INPUT, None)] if scope.is_block else []
    for statement in scope.statements:
        if statement.kind.line >= line:
            break
        if statement.kind.text == "input" and statement.name is not None:
            found.append((statement.name.text, statement))
        elif statement.is_layer and statement.layer_name:
            found.append((statement.layer_name, statement))
    return found
