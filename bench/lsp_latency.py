"""Latency of `cnnc lsp` as an editor feels it: from a change to its diagnostics, and of a hover.

Starts the server over stdio (plain JSON-RPC, no client library), opens a spec, warms up, then
measures, with a new text for every sample (a changed number, so nothing is remembered):
- diagnostics: from sending textDocument/didChange to receiving the publishDiagnostics of that version
  (includes the server's DEBOUNCE_SECONDS quiet time)
- hover: a textDocument/hover on the first layer of the newest text, request to response

    python bench/lsp_latency.py                             # specs/vgg_small.cnn, 50 samples each
    python bench/lsp_latency.py --spec specs/lenet5.cnn --samples 100 --json out.json

Targets (issue 17): median diagnostics under 50 ms, median hover under 20 ms, on a warm server.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import git_record, machine_record, machine_summary  # noqa: E402

TARGETS_MS = {"diagnostics": 50.0, "hover": 20.0}


class Server:
    """`cnnc lsp` in a subprocess, spoken to in JSON-RPC over its stdin and stdout."""

    def __init__(self, command: list[str]):
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.next_id = 0

    def send(self, method: str, params, request: bool = False) -> int | None:
        message = {"jsonrpc": "2.0", "method": method, "params": params}
        if request:
            self.next_id += 1
            message["id"] = self.next_id
        body = json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.process.stdin.flush()
        return message.get("id")

    def receive(self) -> dict:
        length = None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the server closed its output")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return json.loads(self.process.stdout.read(length))

    def wait_for(self, accept) -> dict:
        while True:
            message = self.receive()
            if accept(message):
                return message

    def request(self, method: str, params) -> dict:
        request_id = self.send(method, params, request=True)
        return self.wait_for(lambda m: m.get("id") == request_id and "method" not in m)

    def close(self) -> None:
        self.request("shutdown", None)
        self.send("exit", None)
        self.process.wait(timeout=10)


def diagnostics_of(version: int, uri: str):
    return lambda m: (m.get("method") == "textDocument/publishDiagnostics" and m["params"]["uri"] == uri
                      and m["params"].get("version") == version)


def variants(text: str):
    """Texts that differ from `text` in one number, a new one each time (the first integer argument)."""
    match = re.search(r"(\w+=)(\d+)", text)
    number = 0
    while True:
        number += 1
        yield text[:match.start(2)] + str(int(match.group(2)) + number % 7 + 1) + text[match.end(2):]


def first_layer_position(text: str) -> dict:
    """The kind word of the first layer with arguments inside a model (not in a block definition)."""
    in_model = False
    for line_number, line in enumerate(text.split("\n")):
        if re.match(r"\s*(model|block)\b", line):
            in_model = line.lstrip().startswith("model")
            continue
        match = re.match(r"\s*(\w+)\s+\w+\(", line)
        if in_model and match and match.group(1) not in ("input", "loss"):
            return {"line": line_number, "character": match.start(1)}
    raise ValueError("no layer statement found in a model")


def measure(spec: Path, samples: int, warmup: int) -> dict:
    text = spec.read_text()
    uri = spec.resolve().as_uri()
    server = Server([sys.executable, "-m", "cnnc", "lsp"])
    try:
        server.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": {}})
        server.send("initialized", {})
        opened = {"uri": uri, "languageId": "cnn", "version": 1, "text": text}
        server.send("textDocument/didOpen", {"textDocument": opened})
        server.wait_for(diagnostics_of(1, uri))
        times = {"diagnostics": [], "hover": []}
        texts, version = variants(text), 1
        hover_at = first_layer_position(text)
        for sample in range(warmup + samples):
            version += 1
            started = time.perf_counter()
            server.send("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                   "contentChanges": [{"text": next(texts)}]})
            server.wait_for(diagnostics_of(version, uri))
            diagnostics_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            hover = server.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": hover_at})
            hover_ms = (time.perf_counter() - started) * 1000
            if hover.get("result") is None:
                raise RuntimeError(f"no hover at {hover_at}: {hover}")
            if sample >= warmup:
                times["diagnostics"].append(diagnostics_ms)
                times["hover"].append(hover_ms)
    finally:
        server.close()
    return {name: summary(values) for name, values in times.items()}


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered), 2), "min_ms": round(ordered[0], 2),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2), "samples": len(ordered)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/vgg_small.cnn"))
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the record here")
    args = parser.parse_args(argv)
    results = measure(args.spec, args.samples, args.warmup)
    machine = machine_record()
    for name, values in results.items():
        verdict = "PASS" if values["median_ms"] < TARGETS_MS[name] else "MISS"
        print(f"{name:12s} median {values['median_ms']:7.2f} ms  min {values['min_ms']:7.2f}  "
              f"p90 {values['p90_ms']:7.2f}  (target < {TARGETS_MS[name]:.0f} ms: {verdict})")
    print(machine_summary(machine))
    if args.json:
        record = {"spec": args.spec.as_posix(), "results": results, "targets_ms": TARGETS_MS,
                  "load_average": os.getloadavg(), "machine": machine,
                  "git": git_record(Path(__file__).resolve().parent.parent)}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
