"""What may reach generated C, checked in one place for the C backend and the standalone C export.

The rule ("safe codegen"): the C text holds only numbers checked here, identifiers that cnnc builds itself
from layer positions (`l3_weight`, `L3`), a user-chosen export prefix that `c_symbol` accepts, and, in
comments only, spec names that `comment_name` accepts. Nothing else from a spec or a file reaches the C.
"""
from __future__ import annotations

import re
from math import isfinite

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A layer of a block instance is named with dots (`s1.c1`, `p1.u1.d`): identifiers joined by dots.
DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if inline int long
    register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
    _Bool _Complex _Imaginary _Alignas _Alignof _Atomic _Generic _Noreturn _Static_assert _Thread_local
    bool true false alignas alignof static_assert thread_local typeof typeof_unqual constexpr nullptr
""".split())
MAX_INT32 = 2**31 - 1


def is_identifier(text) -> bool:
    """A plain identifier: [A-Za-z_][A-Za-z0-9_]*."""
    return isinstance(text, str) and IDENTIFIER.match(text) is not None


def is_c_symbol(text) -> bool:
    """An identifier usable as a C symbol: not a keyword (C99 to C23), not reserved for the implementation."""
    return (is_identifier(text) and text not in C_KEYWORDS and not text.startswith("__")
            and re.match(r"_[A-Z]", text) is None)


def comment_name(name, what: str) -> str:
    """A spec name that may appear in a C comment: a plain identifier, or identifiers joined by dots (a block
    instance's layer, `s1.c1`), else ValueError."""
    if not (isinstance(name, str) and DOTTED_NAME.match(name)):
        raise ValueError(f"{what} {name!r} is not a valid identifier (expected [A-Za-z_][A-Za-z0-9_]*, or such "
                         f"names joined by dots); "
                         f"cnnc refuses to generate C for it")
    return name


def c_int(value, what: str, minimum: int = 0, maximum: int = MAX_INT32) -> int:
    """A Python int (not a bool, not a string that looks like one) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValueError(f"{what} must be an integer in [{minimum}, {maximum}]; got {value!r}")
    return value


def c_real(value, what: str) -> str:
    """A finite real number as a C literal (repr round-trips a double exactly)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not isfinite(value):
        raise ValueError(f"{what} must be a finite number; got {value!r}")
    return repr(float(value))
