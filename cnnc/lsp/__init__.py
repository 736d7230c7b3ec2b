"""Editor support for .cnn files: `cnnc lsp` (a language server, needs `pip install 'cnnc[lsp]'`) and
`cnnc fmt` (the canonical layout, no extra dependency). The commands are in cnnc/cli/editor.py.

    outline.py     a tolerant outline of the text: scopes, statements, names and their uses
    analysis.py    the adapters to the compiler's front end: diagnostics, shapes, the vocabulary
    formatting.py  the canonical layout
    features.py    hover, inlay hints, completion, names, symbols, formatting and quick fixes
    server.py      the pygls server: document sync, debounced diagnostics, request routing
"""
from __future__ import annotations

INSTALL_HINT = "cnnc lsp needs pygls: pip install 'cnnc[lsp]' (or pip install 'pygls>=2,<3')"
