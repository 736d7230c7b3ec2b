"""`cnnc lsp`: the language server, over stdio, on pygls.

Documents are synchronised whole (TextDocumentSyncKind.Full): a .cnn file is small, and the server's
lines then split exactly as the compiler's. Each change is checked after a short quiet time
(DEBOUNCE_SECONDS) in a worker thread of its own, never on the event loop; the diagnostics of a version
are sent only while it is still the newest, so a slow check of an old text never holds back the next
one (it runs on, sharing the CPU, and its result is dropped: Python cannot stop a thread).
Requests (hover, completion, ...) use the analysis of the newest text, computed once per text and
shared by every request that needs it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from .._version import __version__
from . import features
from .features import Document, RenameRefused

DEBOUNCE_SECONDS = 0.02
CHECK_THREADS = 32  # started on demand: a new text's check never queues behind slow checks of old ones
REMEMBERED_TEXTS = 16
logger = logging.getLogger(__name__)


class CnnLanguageServer(LanguageServer):
    def __init__(self):
        super().__init__("cnnc", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Full)
        self.texts: dict[str, tuple[int, str]] = {}  # uri -> (version, text)
        self.pending: dict[str, asyncio.Task] = {}  # uri -> the debounced check of its newest text
        self.documents: OrderedDict[tuple[str, str], asyncio.Future] = OrderedDict()  # (uri, text) -> Document
        self.checker = ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="cnnc-check")

    def document_future(self, uri: str, text: str) -> asyncio.Future:
        """The analysis of this text, started once in a worker thread and remembered for a while."""
        key = (uri, text)
        future = self.documents.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self.checker, features.make_document, uri, text,
                                          lambda: self.texts.get(uri, (0, None))[1] == text)
            self.documents[key] = future
            future.add_done_callback(lambda _: self.forget_if_stale(key))
            while len(self.documents) > REMEMBERED_TEXTS:
                self.documents.popitem(last=False)
        self.documents.move_to_end(key)
        return future

    def forget_if_stale(self, key: tuple[str, str]) -> None:
        """A text that was replaced while it was analysed may have been analysed only in part: not kept."""
        uri, text = key
        if self.texts.get(uri, (0, None))[1] != text:
            self.documents.pop(key, None)

    async def document(self, uri: str) -> Document | None:
        if uri not in self.texts:
            return None
        return await self.document_future(uri, self.texts[uri][1])

    def text_changed(self, uri: str, version: int, text: str, delay: float) -> None:
        self.texts[uri] = (version, text)
        previous = self.pending.pop(uri, None)
        if previous is not None:
            previous.cancel()  # only its wait: a check already running finishes, and is not published
        self.pending[uri] = asyncio.get_running_loop().create_task(self.publish_after(uri, version, text, delay))

    async def publish_after(self, uri: str, version: int, text: str, delay: float) -> None:
        await asyncio.sleep(delay)
        doc = await asyncio.shield(self.document_future(uri, text))
        if self.texts.get(uri, (None,))[0] != version:
            return  # a newer text arrived while this one was checked
        self.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(uri=uri, version=version, diagnostics=features.diagnostics(doc)))


server = CnnLanguageServer()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
async def did_open(ls: CnnLanguageServer, params: types.DidOpenTextDocumentParams):
    ls.text_changed(params.text_document.uri, params.text_document.version, params.text_document.text, 0)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
async def did_change(ls: CnnLanguageServer, params: types.DidChangeTextDocumentParams):
    text = ls.texts.get(params.text_document.uri, (0, ""))[1]
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangeWholeDocument):
            text = change.text
        else:  # a client ignoring our Full sync: let pygls apply the range edit
            text = ls.workspace.get_text_document(params.text_document.uri).source
    ls.text_changed(params.text_document.uri, params.text_document.version, text, DEBOUNCE_SECONDS)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
async def did_close(ls: CnnLanguageServer, params: types.DidCloseTextDocumentParams):
    uri = params.text_document.uri
    ls.texts.pop(uri, None)
    task = ls.pending.pop(uri, None)
    if task is not None:
        task.cancel()
    ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


@server.feature(types.TEXT_DOCUMENT_HOVER)
async def hover(ls: CnnLanguageServer, params: types.HoverParams):
    doc = await ls.document(params.text_document.uri)
    return features.hover(doc, params.position) if doc else None


@server.feature(types.TEXT_DOCUMENT_INLAY_HINT)
async def inlay_hint(ls: CnnLanguageServer, params: types.InlayHintParams):
    doc = await ls.document(params.text_document.uri)
    return features.inlay_hints(doc, params.range) if doc else []


@server.feature(types.TEXT_DOCUMENT_CODE_LENS)
async def code_lens(ls: CnnLanguageServer, params: types.CodeLensParams):
    """Output shapes as code lenses, for clients that show no inlay hints."""
    capabilities = ls.client_capabilities.text_document
    if capabilities is not None and capabilities.inlay_hint is not None:
        return []
    doc = await ls.document(params.text_document.uri)
    return features.code_lenses(doc) if doc else []


@server.feature(types.TEXT_DOCUMENT_COMPLETION,
                types.CompletionOptions(trigger_characters=["(", ",", "=", " "]))
async def completion(ls: CnnLanguageServer, params: types.CompletionParams):
    doc = await ls.document(params.text_document.uri)
    return features.completion(doc, params.position) if doc else None


@server.feature(types.TEXT_DOCUMENT_DEFINITION)
async def definition(ls: CnnLanguageServer, params: types.DefinitionParams):
    doc = await ls.document(params.text_document.uri)
    return features.definition(doc, params.position) if doc else None


@server.feature(types.TEXT_DOCUMENT_REFERENCES)
async def references(ls: CnnLanguageServer, params: types.ReferenceParams):
    doc = await ls.document(params.text_document.uri)
    return features.references(doc, params.position, params.context.include_declaration) if doc else []


@server.feature(types.TEXT_DOCUMENT_PREPARE_RENAME)
async def prepare_rename(ls: CnnLanguageServer, params: types.PrepareRenameParams):
    doc = await ls.document(params.text_document.uri)
    return features.prepare_rename(doc, params.position) if doc else None


@server.feature(types.TEXT_DOCUMENT_RENAME)
async def rename(ls: CnnLanguageServer, params: types.RenameParams):
    doc = await ls.document(params.text_document.uri)
    if doc is None:
        return None
    try:
        return features.rename(doc, params.position, params.new_name)
    except RenameRefused as e:
        raise JsonRpcInvalidParams(str(e)) from None


@server.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
async def document_symbol(ls: CnnLanguageServer, params: types.DocumentSymbolParams):
    doc = await ls.document(params.text_document.uri)
    return features.document_symbols(doc) if doc else []


@server.feature(types.TEXT_DOCUMENT_FORMATTING)
async def formatting(ls: CnnLanguageServer, params: types.DocumentFormattingParams):
    doc = await ls.document(params.text_document.uri)
    return features.formatting(doc) if doc else []


@server.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]))
async def code_action(ls: CnnLanguageServer, params: types.CodeActionParams):
    doc = await ls.document(params.text_document.uri)
    return features.code_actions(doc, params.range) if doc else []


def serve() -> int:
    logging.basicConfig(level=logging.WARNING)
    server.start_io()
    if sys.stdout.closed:  # pygls closes it on exit: nothing more may be written there
        sys.stdout = open(os.devnull, "w")
    return 0
