"""Text -> AST: the Lark grammar in grammar/cnn.lark, and plain dataclasses for what it parses.

Nothing downstream touches Lark objects. Every node keeps its source location so that later
stages report errors at the offending token.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .diagnostics import Diagnostic, Loc, SpecError
from .resources import read_resource


# ---- the AST -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    """An argument value. kind: "int", "float", "word" or "pair" (value is then a tuple of two Values)."""

    kind: str
    value: object
    loc: Loc

    def __str__(self) -> str:
        if self.kind == "pair":
            return f"({self.value[0]}, {self.value[1]})"
        return str(self.value)


@dataclass(frozen=True)
class Argument:
    key: str
    value: Value
    loc: Loc  # of the key


@dataclass(frozen=True)
class InputStmt:
    name: str | None
    dims: tuple[Value, ...]
    loc: Loc


@dataclass(frozen=True)
class LayerStmt:
    kind: str
    name: str | None  # None when unnamed; the shape pass names it <kind>_<k>
    arguments: tuple[Argument, ...]
    loc: Loc  # of the kind word
    name_loc: Loc | None


@dataclass(frozen=True)
class LossStmt:
    kind: str
    loc: Loc  # of the loss name


@dataclass(frozen=True)
class ModelDecl:
    name: str
    statements: tuple[InputStmt | LayerStmt | LossStmt, ...]
    loc: Loc  # of the model name
    end: Loc  # of the closing brace


@dataclass(frozen=True)
class Program:
    file: str
    models: tuple[ModelDecl, ...]


# ---- parsing -------------------------------------------------------------------------------------
@cache
def _parser() -> Lark:
    return Lark(read_resource("grammar", "cnn.lark"), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse(text: str, file: str = "<string>") -> Program:
    """Parse .cnn source text. Raises SpecError with a located message on any syntax error."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise SpecError(_syntax_error(e, text, file), text) from None
    models = tuple(_model(m, file) for m in tree.children)
    if not models:
        raise SpecError(
            Diagnostic("error", "no model found: a .cnn file holds one or more `model NAME { ... }` blocks",
                       Loc(file, 1, 1), hint="start with: model mynet {\n    input image[1, 28, 28]\n    ...\n}"),
            text,
        )
    return Program(file, models)


def _loc(file: str, token: Token) -> Loc:
    return Loc(file, token.line, token.column, max(1, len(str(token))))


def _model(tree: Tree, file: str) -> ModelDecl:
    name, *statements = tree.children
    end = Loc(file, tree.meta.end_line, max(1, tree.meta.end_column - 1))
    return ModelDecl(str(name), tuple(_statement(s, file) for s in statements), _loc(file, name), end)


def _statement(tree: Tree, file: str):
    if tree.data == "input_stmt":
        name, dims = tree.children
        loc = Loc(file, tree.meta.line, tree.meta.column, 5)
        return InputStmt(str(name) if name is not None else None, tuple(_value(d, file) for d in dims.children), loc)
    if tree.data == "loss_stmt":
        (name,) = tree.children
        return LossStmt(str(name), _loc(file, name))
    kind, name, arguments = tree.children
    args = tuple(Argument(str(a.children[0]), _value(a.children[1], file), _loc(file, a.children[0]))
                 for a in (arguments.children if arguments is not None else []) if a is not None)
    return LayerStmt(str(kind), str(name) if name is not None else None, args, _loc(file, kind),
                     _loc(file, name) if name is not None else None)


def _value(tree, file: str) -> Value:
    if isinstance(tree, Token):  # pragma: no cover - every value is wrapped in a rule alias
        raise AssertionError(tree)
    if tree.data == "pair":
        first, second = (_value(c, file) for c in tree.children)
        return Value("pair", (first, second), Loc(file, tree.meta.line, tree.meta.column,
                                                 tree.meta.end_column - tree.meta.column))
    (token,) = tree.children
    converters = {"int": int, "float": float, "word": str}
    return Value(tree.data, converters[tree.data](token), _loc(file, token))


# ---- syntax errors that say what to do ----------------------------------------------------------
_TOKEN_WORDS = {
    "RPAR": "')'", "LPAR": "'('", "RBRACE": "'}'", "LBRACE": "'{'", "RSQB": "']'", "LSQB": "'['",
    "COMMA": "','", "EQUAL": "'='", "SEMICOLON": "';'", "NAME": "a name", "SIGNED_INT": "an integer",
    "SIGNED_FLOAT": "a number", "_NEWLINE": "end of line", "$END": "end of file", "MODEL": "'model'",
    "INPUT": "'input'", "LOSS": "'loss'",
}


def _describe(token_type: str) -> str:
    return _TOKEN_WORDS.get(token_type, token_type.lower())


def _found(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "_NEWLINE":
        return "end of line"
    return f"'{token}'"


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> Diagnostic:
    line, col = max(1, e.line if e.line != -1 else 1), max(1, e.column if e.column != -1 else 1)
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
        expected = set(e.expected)
        if "RBRACE" in expected or not text.strip():
            message = "unexpected end of file: a model block is missing its closing '}'"
        else:
            message = "unexpected end of file: expected " + _expected_list(expected)
        return Diagnostic("error", message, Loc(file, line, col))
    if isinstance(e, UnexpectedCharacters):
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        hint = None
        if char == "{":
            hint = "'{' opens a model block: `model NAME {`"
        return Diagnostic("error", f"unexpected character '{char}'", Loc(file, line, col), hint=hint)
    assert isinstance(e, UnexpectedToken)
    token, expected = e.token, set(e.expected)
    length = 1 if token.type == "_NEWLINE" else max(1, len(str(token)))
    if token.type == "_NEWLINE":
        # Point just past the last character of the line rather than at the newline itself.
        line_text = text.splitlines()[token.line - 1] if token.line - 1 < len(text.splitlines()) else ""
        line, col = token.line, len(line_text.rstrip()) + 1
    loc = Loc(file, line, col, length)
    closing = {"(": "')'", "[": "']'"}
    opener = _unclosed_bracket(text, token)
    if opener and token.type in ("_NEWLINE", "$END", "RBRACE", "SEMICOLON"):
        what = "argument list" if opener == "(" else "input dimensions"
        return Diagnostic("error", f"unclosed '{opener}': the {what} is missing its closing {closing[opener]} before "
                          + _found(token), loc, hint=f"close the {what} with {closing[opener]}")
    if "MODEL" in expected:
        return Diagnostic("error", f"unexpected {_found(token)}: expected `model NAME {{ ... }}`", loc)
    if "EQUAL" in expected:
        return Diagnostic("error", f"expected '=' after the argument name, found {_found(token)}", loc,
                          hint="arguments are written key=value, e.g. kernel=3")
    if expected >= {"_NEWLINE", "SEMICOLON"} or expected >= {"_NEWLINE", "RBRACE"}:
        return Diagnostic("error", f"unexpected {_found(token)} after the end of the statement", loc,
                          hint="one statement per line: KIND [NAME] [(key=value, ...)]; separate statements on one line with ';'")
    if "LBRACE" in expected:
        return Diagnostic("error", f"expected '{{' after the model name, found {_found(token)}", loc)
    return Diagnostic("error", f"unexpected {_found(token)}: expected {_expected_list(expected)}", loc)


def _unclosed_bracket(text: str, token: Token) -> str | None:
    """The innermost '(' or '[' still open on the token's line before the token, if any."""
    lines = text.splitlines()
    if token.type == "$END" or not 1 <= token.line <= len(lines):
        before = lines[-1] if lines else ""
    else:
        before = lines[token.line - 1][: token.column - 1]
    stack = []
    for char in before.split("#", 1)[0]:
        if char in "([":
            stack.append(char)
        elif char in ")]" and stack:
            stack.pop()
    return stack[-1] if stack else None


def _expected_list(expected: set[str]) -> str:
    words = sorted({_describe(t) for t in expected})
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
