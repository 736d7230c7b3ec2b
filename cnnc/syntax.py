"""Text -> AST: the Lark grammar in grammar/cnn.lark, and plain dataclasses for what it parses.

Nothing downstream touches Lark objects. Every node keeps its source location so that later
stages report errors at the offending token. Syntax errors are turned into messages that say what
is missing and where (see `_syntax_error`); names (layer kinds, arguments, words) are checked later,
in cnnc/shapes.py.
"""
from __future__ import annotations

import contextlib
import difflib
import math
import re
from dataclasses import dataclass
from functools import cache

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedInput, UnexpectedToken, v_args

from .diagnostics import Diagnostic, Loc, SpecError
from .fileio import cache_home
from .resources import read_resource

MAX_INT = 2**63 - 1  # integers must fit a 64-bit signed int; anything larger is a typo


# ---- the AST -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    """An argument value or input dimension.

    kind: "int", "float", "word" (value is a str) or "pair" (value is a tuple of two Values:
    scalars, or pairs themselves in an asymmetric padding ((before, after), (before, after))).
    """

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
    loc: Loc  # of the keyword `input`
    name_loc: Loc | None = None
    dims_loc: Loc | None = None  # from '[' to ']'


@dataclass(frozen=True)
class LayerStmt:
    """A layer, a merge or a block instance: KIND [NAME] [(operand, ..., key=value, ...)]."""

    kind: str
    name: str | None  # None when unnamed; the shape pass names it <kind>_<k>
    arguments: tuple[Argument, ...]
    loc: Loc  # of the kind word
    name_loc: Loc | None
    operands: tuple[Value, ...] = ()  # bare names in the parentheses (a merge's inputs), as words


@dataclass(frozen=True)
class LossStmt:
    kind: str
    loc: Loc  # of the loss name


Statement = InputStmt | LayerStmt | LossStmt


@dataclass(frozen=True)
class ModelDecl:
    name: str
    statements: tuple[Statement, ...]
    loc: Loc  # of the model name
    end: Loc  # of the closing brace


@dataclass(frozen=True)
class BlockParam:
    name: str
    default: Value | None  # None: the instance must give it
    loc: Loc  # of the name


@dataclass(frozen=True)
class BlockDecl:
    """`block NAME(param, param=default, ...) { statements }`: layers that models use as one statement."""

    name: str
    params: tuple[BlockParam, ...]
    statements: tuple[Statement, ...]
    loc: Loc  # of the block name
    end: Loc  # of the closing brace


@dataclass(frozen=True)
class Program:
    file: str
    models: tuple[ModelDecl, ...]
    blocks: tuple[BlockDecl, ...] = ()


# ---- parsing -------------------------------------------------------------------------------------
@cache
def _parser() -> Lark:
    """The LALR parser for grammar/cnn.lark. Building its tables takes ~30 ms, so Lark keeps them in
    cnnc's cache directory (its own `cache=` option: the file records a hash of the grammar, the options
    and Lark's version, and a stale, damaged or unwritable file only means building them again)."""
    path = cache_home() / "parser" / "cnn.lark-tables"
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    return Lark(read_resource("grammar", "cnn.lark"), parser="lalr", propagate_positions=True,
                maybe_placeholders=True, cache=str(path))


def parse(text: str, file: str = "<string>") -> Program:
    """Parse .cnn source text. Raises SpecError with a located message on any syntax error."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise SpecError(_syntax_error(e, text, file), text) from None
    to_ast = _ToAst(file)
    declarations = to_ast.transform(tree)
    models = tuple(d for d in declarations if isinstance(d, ModelDecl))
    blocks = tuple(d for d in declarations if isinstance(d, BlockDecl))
    if to_ast.errors:
        raise SpecError(to_ast.errors, text)
    if not models:
        raise SpecError(Diagnostic("error", "no model found: a .cnn file holds one or more `model NAME { ... }` blocks",
                                   Loc(file, 1, 1), hint="start with: model mynet { input image[1, 28, 28] ... }"), text)
    return Program(file, models, blocks)


def _token_loc(file: str, token: Token) -> Loc:
    return Loc(file, token.line, token.column, max(1, len(token)))


def _meta_loc(file: str, meta) -> Loc:
    length = meta.end_column - meta.column if meta.end_line == meta.line else 1
    return Loc(file, meta.line, meta.column, max(1, length))


class _ToAst(Transformer):
    """Parse tree -> AST dataclasses. Numbers out of range are collected in `errors`."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file
        self.errors: list[Diagnostic] = []

    def start(self, models):
        return models

    @v_args(meta=True)
    def model(self, meta, children):
        name, *statements = children
        end = Loc(self.file, meta.end_line, max(1, meta.end_column - 1))  # the '}'
        return ModelDecl(str(name), tuple(statements), _token_loc(self.file, name), end)

    @v_args(meta=True)
    def block(self, meta, children):
        name, params, *statements = children
        end = Loc(self.file, meta.end_line, max(1, meta.end_column - 1))  # the '}'
        return BlockDecl(str(name), tuple(params or ()), tuple(statements), _token_loc(self.file, name), end)

    def block_params(self, children):
        return children

    def block_param(self, children):
        name, default = children
        return BlockParam(str(name), default, _token_loc(self.file, name))

    @v_args(meta=True)
    def input_stmt(self, meta, children):
        name, *dims = children
        name_loc = _token_loc(self.file, name) if name is not None else None
        first, last = dims[0].loc, dims[-1].loc
        dims_loc = Loc(self.file, first.line, first.col - 1, last.col + last.length - first.col + 2)
        return InputStmt(str(name) if name is not None else None, tuple(dims),
                         Loc(self.file, meta.line, meta.column, len("input")), name_loc, dims_loc)

    def loss_stmt(self, children):
        (name,) = children
        return LossStmt(str(name), _token_loc(self.file, name))

    def layer_stmt(self, children):
        kind, name, arguments = children
        arguments = arguments or ()
        return LayerStmt(str(kind), str(name) if name is not None else None,
                         tuple(a for a in arguments if isinstance(a, Argument)),
                         _token_loc(self.file, kind), _token_loc(self.file, name) if name is not None else None,
                         tuple(a for a in arguments if isinstance(a, Value)))

    def arguments(self, children):
        return children

    def argument(self, children):
        key, value = children
        return Argument(str(key), value, _token_loc(self.file, key))

    def operand(self, children):
        (token,) = children
        return Value("word", str(token), _token_loc(self.file, token))

    @v_args(meta=True)
    def pair(self, meta, children):
        return Value("pair", tuple(children), _meta_loc(self.file, meta))

    def word(self, children):
        (token,) = children
        return Value("word", str(token), _token_loc(self.file, token))

    def integer(self, children):
        (token,) = children
        loc = _token_loc(self.file, token)
        # int() refuses strings of more than 4,300 digits, leading zeros included: convert only the
        # significant digits, and only when there are few enough of them to fit 64 bits
        digits = token.lstrip("+-").lstrip("0")
        magnitude = int(digits) if digits and len(digits) <= 19 else (0 if not digits else MAX_INT + 1)
        if magnitude > MAX_INT:
            self.errors.append(Diagnostic("error", f"integer {_shorten(token)} is too large (at most {MAX_INT:,})", loc))
            return Value("int", 0, loc)
        return Value("int", -magnitude if token.startswith("-") else magnitude, loc)

    def real(self, children):
        (token,) = children
        loc = _token_loc(self.file, token)
        value = float(token)
        if not math.isfinite(value):
            self.errors.append(Diagnostic("error", f"number {_shorten(token)} is out of range", loc))
            return Value("float", 0.0, loc)
        return Value("float", value, loc)


def _shorten(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- syntax errors that say what to do ----------------------------------------------------------
_TOKEN_WORDS = {
    "RPAR": "')'", "LPAR": "'('", "RBRACE": "'}'", "LBRACE": "'{'", "RSQB": "']'", "LSQB": "'['",
    "COMMA": "','", "EQUAL": "'='", "SEMICOLON": "';'", "NAME": "a name", "SIGNED_INT": "an integer",
    "SIGNED_FLOAT": "a number", "_NEWLINE": "end of line", "$END": "end of file", "MODEL": "'model'",
    "INPUT": "'input'", "LOSS": "'loss'", "BLOCK": "'block'",
}
_VALUE_TOKENS = {"SIGNED_INT", "SIGNED_FLOAT", "NAME", "LPAR"}
_STATEMENT_END = {"_NEWLINE", "SEMICOLON", "RBRACE"}


def _code(line: str) -> str:
    """A source line without its comment and trailing blanks ('#' only ever starts a comment)."""
    return line.split("#", 1)[0].rstrip()


def _end_of_code(lines: list[str], last_line: int) -> tuple[int, int]:
    """(line, col) just past the last code character on or before `last_line`; (1, 1) if there is none."""
    for number in range(min(last_line, len(lines)), 0, -1):
        code = _code(lines[number - 1])
        if code.strip():
            return number, len(code) + 1
    return 1, 1


def _open_model(lines: list[str], line: int, before: str) -> tuple[str, int] | None:
    """The word ("model" or "block"), name and line of the last `model NAME` or `block NAME` in `before` (the
    code of `line` up to the error) or above it."""
    for number, code in [(line, before)] + [(n, _code(lines[n - 1])) for n in range(line - 1, 0, -1)]:
        found = re.findall(r"\b(model|block)\s+([A-Za-z_][A-Za-z0-9_]*)", code)
        if found:
            return found[-1][1], number, found[-1][0]
    return None


def _unclosed_bracket(before: str) -> str | None:
    """The innermost '(' or '[' still open in `before` (the code of a line up to the error), if any."""
    stack = []
    for char in before:
        if char in "([":
            stack.append(char)
        elif char in ")]" and stack:
            stack.pop()
    return stack[-1] if stack else None


def _found(token: Token) -> str:
    if token.type in ("$END", "_NEWLINE"):
        return _TOKEN_WORDS[token.type]
    return f"'{_shorten(str(token))}'"


def _expected_list(expected: set[str]) -> str:
    words = sorted({_TOKEN_WORDS.get(t, t.lower()) for t in expected})
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _char_name(char: str) -> str:
    return f"'{char}'" if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"


_CHAR_HINTS = {
    "{": "'{' opens a model block: `model NAME {`",
    '"': "the language has no strings: write words without quotes, e.g. activation=relu",
    "'": "the language has no strings: write words without quotes, e.g. activation=relu",
    ":": "arguments are written key=value, e.g. kernel=3",
    "-": "names are letters, digits and '_' (e.g. conv_2d); a negative number has no space after '-'",
}


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> Diagnostic:
    lines = text.split("\n")
    if isinstance(e, UnexpectedCharacters):
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        return Diagnostic("error", f"unexpected character {_char_name(char)}", Loc(file, e.line, e.column),
                          hint=_CHAR_HINTS.get(char))
    if not isinstance(e, UnexpectedToken):  # UnexpectedEOF: the LALR parser reports end of input as a token
        line, col = _end_of_code(lines, len(lines))
        return Diagnostic("error", "unexpected end of file", Loc(file, line, col))
    token, expected = e.token, set(e.expected)
    if token.type == "$END":
        line, col = _end_of_code(lines, len(lines))
        length = 1
    elif token.type == "_NEWLINE":  # point just past the last code on the line, not at the newline
        line, col = _end_of_code(lines, token.line)
        length = 1
    else:
        line, col, length = token.line, token.column, max(1, len(token))
    before = _code(lines[line - 1])[: col - 1]
    message, hint = _explain(token, expected, before, lines, line)
    return Diagnostic("error", message, Loc(file, line, col, length), hint)


def _explain(token: Token, expected: set[str], before: str, lines: list[str], line: int) -> tuple[str, str | None]:
    """(message, hint) for an unexpected token; `before` is the code on its line before it."""
    found = _found(token)
    opener = _unclosed_bracket(before)
    ends = token.type in _STATEMENT_END or token.type == "$END"
    if opener and ends:
        what, close = ("argument list", "')'") if opener == "(" else ("input dimensions", "']'")
        if opener == "(" and re.search(r"=\s*\([^()]*$", before):
            what = "pair"
        return (f"unclosed '{opener}': the {what} needs a closing {close} before {found}",
                f"close the {what} with {close}")
    if re.search(r"=\s*\([^()]*$", before):  # inside a pair
        return (f"unexpected {found} in a pair: a pair is two values in parentheses, (height, width)",
                "e.g. kernel=(3, 5)")
    if opener and "COMMA" in expected:
        what, close = ("arguments", "')'") if opener == "(" else ("dimensions", "']'")
        return f"expected ',' or {close} between {what}, found {found}", f"separate {what} with ','"
    if re.search(r"=\s*$", before) and expected & _VALUE_TOKENS:
        return (f"expected a value after '=', found {found}",
                "a value is an integer, a number, a word or a pair like (3, 5)")
    if re.search(r"\[\s*$|,\s*$", before) and opener == "[":
        return f"expected an input dimension (an integer), found {found}", "e.g. input image[1, 28, 28]"
    if re.search(r"\bloss\s*$", before) and "NAME" in expected:
        return f"expected the loss after 'loss', found {found}", "write `loss cross_entropy` or `loss mse`"
    if re.search(r"\binput(\s+[A-Za-z_][A-Za-z0-9_]*)?\s*$", before) and "LSQB" in expected:
        return (f"expected the input dimensions in '[...]', found {found}",
                "e.g. input image[1, 28, 28] ([C, H, W]) or input signal[1, 128] ([C, L])")
    if re.search(r"\bmodel\s*$", before) and "NAME" in expected:
        return f"expected the model name after 'model', found {found}", "write `model NAME {`"
    if token.type in ("$END", "MODEL", "BLOCK") and "MODEL" not in expected:
        model = _open_model(lines, line, before)
        which = f"{model[2]} '{model[0]}' (opened at line {model[1]})" if model else "a model block"
        where = {"$END": "end of file", "MODEL": "the next model", "BLOCK": "the next block"}[token.type]
        word = model[2] if model else "model"
        return f"{which} is missing its closing '}}' before {where}", f"close the {word} block with '}}'"
    if "MODEL" in expected:  # at the top level, between model blocks
        hint = "statements go inside a model block: model NAME { ... }"
        if token.type == "RBRACE":
            hint = "is there one '}' too many?"
        elif token.type == "NAME" and difflib.get_close_matches(token.lower(), ["model"], cutoff=0.7):
            hint = "did you mean 'model'?"
        return f"unexpected {found} outside a model block", hint
    if "EQUAL" in expected:
        return f"expected '=' after the argument name, found {found}", "arguments are written key=value, e.g. kernel=3"
    if "LBRACE" in expected:
        return f"expected '{{' after the model name, found {found}", "write `model NAME {`"
    if not before.strip() or before.rstrip().endswith((";", "{")):
        return (f"expected a statement, found {found}",
                "a statement is `input NAME[dims]`, `KIND [NAME] [(key=value, ...)]` or `loss NAME`")
    if "_NEWLINE" in expected and not ends:
        hint = "one statement per line: KIND [NAME] [(key=value, ...)]; separate statements on one line with ';'"
        if "LPAR" in expected and token.type == "NAME":
            hint = "arguments go in parentheses after the layer name, e.g. dense out(units=10)"
        return f"unexpected {found} after the end of the statement", hint
    return f"unexpected {found}: expected {_expected_list(expected)}", None
