"""The canonical layout of a .cnn file, for `cnnc fmt` and the editor's "format document".

- one statement per line (`;` separators become line breaks), `{` at the end of its header line,
  `}` on its own line; four spaces of indentation per open block
- no spaces inside brackets or around `=`, one after each `,`: `conv2d c1(filters=6, kernel=(3, 5))`
- trailing comments aligned: in a run of lines without a blank line between them, every trailing
  comment starts two spaces after the longest code line that has one
- at most one blank line in a row, none after `{` or before `}`, one newline at the end

Formatting changes layout only: the result parses to the same program (checked on every call), and
formatting it again changes nothing. Text with a syntax error is not formatted.
"""
from __future__ import annotations

from dataclasses import dataclass

from .outline import Token, tokenize

INDENT = "    "
COMMENT_GAP = 2


@dataclass
class _Line:
    tokens: list[Token]  # code; [] for a comment-only or blank line
    comment: str | None = None
    closes: bool = False  # a lone '}'
    blank: bool = False
    source_line: int = -1  # where the line's last token was, to attach a comment on the same line

    @property
    def opens(self) -> bool:
        return bool(self.tokens) and self.tokens[-1].text == "{"


def format_text(text: str) -> str | None:
    """The canonical layout of `text`, or None when it cannot be formatted safely (a syntax error)."""
    from .analysis import program_signature

    before = program_signature(text)
    if before is None:
        return None
    tokens = tokenize(text)
    if any(t.kind == "other" for t in tokens):
        return None
    formatted = _render(_lines(tokens))
    return formatted if program_signature(formatted) == before else None


def _lines(tokens: list[Token]) -> list[_Line]:
    """Logical lines: a statement per line, header lines ending in '{', lone '}', comments, blanks."""
    lines: list[_Line] = []
    current: list[Token] = []
    newlines = 0

    def flush():
        nonlocal current
        if current:
            lines.append(_Line(current, source_line=current[-1].line))
            current = []

    for token in tokens:
        if token.kind == "newline":
            flush()
            newlines += 1
            if newlines == 2:
                lines.append(_Line([], blank=True))
            continue
        newlines = 0
        if token.kind == "comment":
            _attach_comment(lines, current, token, flush)
        elif token.text == ";":
            flush()
        elif token.text == "{":
            current.append(token)
            flush()
        elif token.text == "}":
            flush()
            lines.append(_Line([token], closes=True, source_line=token.line))
        else:
            current.append(token)
    flush()
    return lines


def _attach_comment(lines: list[_Line], current: list[Token], token: Token, flush) -> None:
    comment = token.text.rstrip()
    if current:
        flush()
        lines[-1].comment = comment
    elif lines and lines[-1].source_line == token.line and lines[-1].comment is None:
        lines[-1].comment = comment
    else:
        lines.append(_Line([], comment=comment, source_line=token.line))


def _render(lines: list[_Line]) -> str:
    rendered: list[tuple[str, str | None]] = []  # (code with indentation, trailing comment)
    depth = 0
    for i, line in enumerate(lines):
        if line.closes:
            depth = max(0, depth - 1)
        if line.blank:
            if _keeps_blank(rendered, lines, i):
                rendered.append(("", None))
            continue
        indent = INDENT * depth
        if line.tokens:
            rendered.append((indent + _code(line.tokens), line.comment))
        else:
            rendered.append((indent + line.comment, None))
        if line.opens:
            depth += 1
    while rendered and rendered[-1] == ("", None):
        rendered.pop()
    return "\n".join(_aligned(rendered)) + "\n" if rendered else ""


def _keeps_blank(rendered: list[tuple[str, str | None]], lines: list[_Line], i: int) -> bool:
    """One blank line between two lines, never at the start, after '{', before '}' or twice."""
    if not rendered or rendered[-1] == ("", None) or rendered[-1][0].rstrip().endswith("{"):
        return False
    following = next((line for line in lines[i + 1:] if not line.blank), None)
    return following is not None and not following.closes


def _aligned(rendered: list[tuple[str, str | None]]) -> list[str]:
    """Each run of lines between blank lines aligns its trailing comments at one column."""
    out, run = [], []
    for code, comment in rendered + [("", None)]:
        if code.strip():
            run.append((code, comment))
            continue
        out += _align_run(run)
        run = []
        out.append(code)
    return out[:-1]


def _align_run(run: list[tuple[str, str | None]]) -> list[str]:
    commented = [len(code) for code, comment in run if comment]
    column = max(commented, default=0) + COMMENT_GAP
    return [code.ljust(column) + comment if comment else code for code, comment in run]


_NO_SPACE_BEFORE = {",", ")", "]", ";", "=", "."}
_NO_SPACE_AFTER = {"(", "[", "=", "."}


def _code(tokens: list[Token]) -> str:
    parts = [tokens[0].text]
    for before, token in zip(tokens, tokens[1:]):
        parts.append((" " if _space_between(before, token) else "") + token.text)
    return "".join(parts)


def _space_between(before: Token, token: Token) -> bool:
    if token.text in _NO_SPACE_BEFORE or before.text in _NO_SPACE_AFTER:
        return False
    if token.text == "(":
        return before.kind != "name"
    if token.text == "[":
        return before.text == "input"
    return True
