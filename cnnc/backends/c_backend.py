"""The C backend: the network compiled to native code, with exactly the NumPy backend's Model API.

    m = cnnc.load("specs/lenet5.cnn", backend="c", dtype="float32")   # generate, compile (cached), load
    y = m.forward(x); loss, dy = m.loss(y, labels); dx = m.backward(dy)

    module = compile_networks([net_a, net_b], "float64")   # several networks, one compiler run
    a = module.model("net_a", seed=0)

Memory, as the generated C sees it (see c_codegen for the layout, templates/module.c.j2 for the glue and
cnnc/kernels/ for the kernels):
    parameter block   every ParamSpec, one after another; m.params[name] is a reshaped NumPy view on it
    gradient block    the same layout; m.grads[name] likewise. backward overwrites it.
    buffer block      batch norm's running statistics; m.buffers[name] views it. forward(train=True) updates it
    activation block  the input copy, every layer's output, pre-activations, dropout masks and the gradient
                      buffers (two alternating scratch buffers in a chain, one per tensor in a graph), for a
                      batch of N; grown (never shrunk) to the largest N seen
    argmax block      int32 max-pool winners, likewise
The blocks are allocated by cffi and owned by the model; the views keep them alive.

Options (cnnc.load(..., backend="c", **options)): cache_dir, openmp (default True), native
(-march=native, default True unless $CNNC_PORTABLE is set), opt ("-O3"), extra_cflags.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import sysconfig
from pathlib import Path

import numpy as np

from .._version import __version__
from ..diagnostics import CnncError
from ..fileio import atomic_write_bytes, atomic_write_text, available_memory, check_distinct, human_size
from ..frontend import read_network, read_source, select
from ..ir import Network
from ..model import DTYPES, Model, check_dtype
from . import c_build
from .c_codegen import SIZE_CONSTANTS, VECTOR_BYTES, CSource, NetworkPlan, generate, plan_network

# The losses the C module computes (kernels/loss.h).
C_LOSSES = ("cross_entropy", "mse", "nll")

BUILD_OPTIONS = ("cache_dir", "openmp", "native", "opt", "extra_cflags")


def _check_options(options: dict) -> None:
    unknown = sorted(set(options) - set(BUILD_OPTIONS))
    if unknown:
        raise ValueError(f"unknown C backend option(s) {', '.join(unknown)}; the options are {', '.join(BUILD_OPTIONS)}")


# ---- a compiled module: one or more networks --------------------------------------------------------
class CModule:
    """The compiled code of one or more networks of one dtype, and their plans."""

    def __init__(self, built: c_build.Built, plans: tuple[NetworkPlan, ...], dtype: str):
        self.built, self.dtype = built, dtype
        self.plans = {plan.network.name: plan for plan in plans}
        self._source = built.source
        for plan in plans:
            self._check_sizes(plan)

    @property
    def source(self) -> CSource:
        """The generated C: the build's, or (a module from the cache) rendered again on first use."""
        if self._source is None:
            self._source = generate([plan.network for plan in self.plans.values()], self.dtype)
        return self._source

    def _check_sizes(self, plan: NetworkPlan) -> None:
        """The sizes the compiled C reports must be the plan's: a mismatch means a stale module."""
        expected = dict(zip(SIZE_CONSTANTS, (plan.param_count, plan.act_count, plan.fixed_count, plan.argmax_count,
                                             plan.in_size, plan.out_size, plan.dropout_count, plan.buffer_count)))
        for what, value in expected.items():
            got = getattr(self.built.lib, f"{plan.K}MODEL_{what}")
            if got != value:
                raise CnncError(f"the C module in {self.built.directory} does not match model '{plan.network.name}' "
                                f"({plan.K}MODEL_{what} is {got}, expected {value}); delete that directory to rebuild it")

    @property
    def names(self) -> list[str]:
        return list(self.plans)

    def model(self, name: str | None = None, seed: int = 0) -> CModel:
        if name is None:
            if len(self.plans) != 1:
                raise ValueError(f"this module holds {len(self.plans)} models ({', '.join(self.plans)}); name one")
            name = next(iter(self.plans))
        if name not in self.plans:
            raise ValueError(f"this module has no model '{name}'; it has: {', '.join(self.plans)}")
        return CModel(self.plans[name].network, self.dtype, seed, module=self)


def refuse_unsupported(networks: list[Network]) -> None:
    """The C backend runs graphs of every layer kind, issue 15's additions included; what is left to refuse is
    a loss it has no kernel for. An empty network is refused by check_safe."""
    for network in networks:
        if network.loss not in (None, *C_LOSSES):
            raise CnncError(f"the C backend does not support loss {network.loss} yet; the NumPy backend runs it")


def plan_networks(networks: list[Network], dtype: str) -> tuple[NetworkPlan, ...]:
    """Check and plan the networks as `generate` does (one network unprefixed, a bundle's as m0_, m1_,
    ...), without rendering any C: what a cache hit needs."""
    if not networks:
        raise ValueError("compiling needs at least one network; got none")
    refuse_unsupported(networks)
    single = len(networks) == 1
    return tuple(plan_network(n, "" if single else f"m{k}_", dtype) for k, n in enumerate(networks))


def compile_networks(networks, dtype: str = "float32", **options) -> CModule:
    """Generate one C file for all `networks` and build it, or take the module from the cache (which is
    keyed by the networks and the code generator, so a hit renders no C)."""
    _check_options(options)
    return _compile_networks(networks, check_dtype(dtype), options)


def _compile_networks(networks, dtype: str, options: dict) -> CModule:
    networks = [networks] if isinstance(networks, Network) else list(networks)
    names = [n.name for n in networks]
    if len(set(names)) != len(names):
        raise ValueError(f"networks compiled together need distinct names; got {names}")
    plans = plan_networks(networks, dtype)
    built = c_build.build(c_build.source_key(networks, dtype), lambda: generate(networks, dtype), **options)
    return CModule(built, plans, dtype)


# ---- the model ---------------------------------------------------------------------------------------
class CModel(Model):
    backend_name = "c"

    def __init__(self, network: Network, dtype: str = "float32", seed: int = 0, *, module: CModule | None = None,
                 **options):
        if module is None:
            _check_options(options)
            dtype = check_dtype(dtype)
            module = _compile_networks([network], dtype, options)
        elif options:
            raise ValueError("build options apply when compiling; this model reuses a compiled module")
        elif dtype != module.dtype:  # the module's dtype was checked when it was compiled
            raise ValueError(f"the module was compiled for {module.dtype}; got dtype {dtype}")
        dtype = module.dtype
        plan = module.plans.get(network.name)
        if plan is None or plan.network != network:
            raise ValueError(f"the module was not compiled from this network '{network.name}'")
        self.module, self.plan = module, plan
        self._ffi, lib = module.built.ffi, module.built.lib
        self._c_forward = getattr(lib, f"{plan.P}model_forward")
        self._c_backward = getattr(lib, f"{plan.P}model_backward")
        self._lib = lib
        self._capacity = 0  # the batch size the activation block holds
        self._acts = self._argmax = None
        self._last_batch: int | None = None  # N of the last completed forward
        self._dropout_applied = False
        self._trained = False  # whether the last forward ran in training mode (batch statistics)
        self._dx_scratch: np.ndarray | None = None  # dx for backward(dy, input_grad=False)
        self._setup(network, dtype, seed)
        self._input_tail, self._output_tail = tuple(self.input_shape), tuple(self.output_shape)

    # ---- memory ----
    def _allocate(self):
        """The parameter and gradient blocks (zeroed) and their per-tensor views."""
        count = self.plan.param_count
        self._param_mem = self._ffi.new("real[]", max(count, 1))
        self._grad_mem = self._ffi.new("real[]", max(count, 1))
        self.param_block = self._view(self._param_mem, count)
        self.grad_block = self._view(self._grad_mem, count)
        params, grads = {}, {}
        for spec, field in zip(self.network.param_specs, self.plan.params):
            start = field.offset
            params[spec.name] = self.param_block[start:start + spec.size].reshape(spec.shape)
            grads[spec.name] = self.grad_block[start:start + spec.size].reshape(spec.shape)
        return params, grads

    def _allocate_buffers(self):
        """The buffer block (batch norm's running statistics) and its per-tensor views: m.buffers."""
        count = self.plan.buffer_count
        self._buffer_mem = self._ffi.new("real[]", max(count, 1))
        block = self._view(self._buffer_mem, count)
        return {spec.name: block[field.offset:field.offset + spec.size].reshape(spec.shape)
                for spec, field in zip(self.network.buffer_specs, self.plan.buffers)}

    def _view(self, cdata, count: int) -> np.ndarray:
        """A NumPy array on cffi memory, no copy: writes from either side are seen by the other."""
        return np.frombuffer(self._ffi.buffer(cdata), dtype=self.dtype, count=count)

    def _reserve(self, n: int) -> None:
        """Activation and argmax blocks for a batch of n: allocated when n exceeds every batch before.
        Every forward writes what it later reads; the flags saying which slices hold prepared weights (the
        generated model_forget_weights) are cleared."""
        if n <= self._capacity:
            return
        # the fixed buffers, n samples' buffers, and slack (see _act_reals)
        try:
            self._acts = self._anonymous_block("real", self._act_reals(n), self.dtype.itemsize)
            self._argmax = self._anonymous_block("int32_t", max(n * self.plan.argmax_count, 1), 4)
        except (OSError, MemoryError):  # the system refused the mapping (ENOMEM)
            need = self._act_reals(n) * self.dtype.itemsize + n * self.plan.argmax_count * 4
            raise CnncError(f"model '{self.network.name}': a batch of {n:,} needs {human_size(need)} of activation "
                            f"memory in the C backend, more than the system gives ({human_size(available_memory())} "
                            f"available); use a smaller batch") from None
        if self.plan.prepared:  # no slice of the new block holds prepared weights yet
            getattr(self._lib, f"{self.plan.P}model_forget_weights")(self._acts)
        self._capacity = n
        self._last_batch = None  # the saved state is gone with the old block

    def _anonymous_block(self, ctype: str, count: int, item_size: int):
        """`count` items of fresh anonymous memory (mapped, untouched until a pass writes it), with huge pages
        advised where the system offers them: a training step streams through the whole activation block
        (ResNet-8 at batch 64: 124 MB), and with 4 KiB pages its TLB misses cost about a tenth of the step
        (docs/performance.md). The pointer keeps the mapping alive."""
        # private: a shared anonymous mapping is shmem, which gets huge pages only where shmem_enabled says so
        memory = mmap.mmap(-1, count * item_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            memory.madvise(mmap.MADV_HUGEPAGE)
        return self._ffi.from_buffer(f"{ctype}[]", memory, require_writable=True)

    def _ptr(self, a: np.ndarray, ctype: str = "real[]", writable: bool = False):
        return self._ffi.from_buffer(ctype, a, require_writable=writable)

    def _c_input(self, a: np.ndarray, shape: tuple[int, ...], what: str):
        """A pointer to `a` for C, which reads exactly prod(shape) reals: from_buffer checks neither the
        dtype nor the size, so they are checked here, where the memory is handed over."""
        if a.shape != shape or a.dtype != self.dtype or not a.flags.c_contiguous:
            raise ValueError(f"{what} must be a C-contiguous {self.dtype.name} array of shape {shape}; "
                             f"got {a.dtype.name} {a.shape}")
        return self._ptr(a)

    def _act_reals(self, n: int) -> int:
        # two vectors of slack: one to align the start, one for vector reads just past the last buffer
        return self.plan.fixed_count + n * self.plan.act_count + 2 * VECTOR_BYTES // self.dtype.itemsize

    @property
    def activation_bytes(self) -> int:
        """Bytes held by the activation and argmax blocks."""
        if not self._capacity:
            return 0
        return self._act_reals(self._capacity) * self.dtype.itemsize + self._capacity * self.plan.argmax_count * 4

    # ---- the three calls ----
    def forward(self, x, train: bool = False) -> np.ndarray:
        """x: (N, *input_shape) -> y: (N, *output_shape), a new array each call.
        Inference on an ndarray that is already C-contiguous, of the model's dtype and shape, takes a
        short path (batch-1 latency is mostly Python): no conversion, and the finiteness check in C.
        Anything else goes through the base class's checks and conversions."""
        if (train or type(x) is not np.ndarray or x.dtype != self.dtype or not x.flags.c_contiguous
                or x.shape[1:] != self._input_tail or x.shape[0] == 0):
            return super().forward(x, train)
        n = x.shape[0]
        x_ptr = self._ptr(x)
        if not self._lib.all_finite(x_ptr, x.size):
            raise ValueError("x contains NaN or infinite values; cnnc rejects non-finite inputs")
        self._reserve(n)
        y = np.empty((n, *self._output_tail), self.dtype)
        self._c_forward(self._ptr(y, writable=True), self._acts, self._argmax, x_ptr, self._param_mem,
                        self._buffer_mem, self._ffi.NULL, n, 0)
        self._last_batch, self._dropout_applied, self._trained = n, False, False
        self._forward_batch = n
        return y

    def _forward(self, x, train, masks):
        """x: (N, *input_shape) contiguous of self.dtype -> y: (N, *output_shape)"""
        n = x.shape[0]
        x_ptr = self._c_input(x, (n, *self.input_shape), "x")
        if train:
            self._check_batch_statistics(n)
        self._reserve(n)
        y = np.empty((n, *self.output_shape), self.dtype)
        masks = self._mask_arrays(n, masks) if train and masks and self.plan.dropout_layers else None
        masks_arg = self._ffi.new("real*[]", [self._ptr(a) for a in masks]) if masks else self._ffi.NULL
        self._c_forward(self._ptr(y, writable=True), self._acts, self._argmax, x_ptr, self._param_mem,
                        self._buffer_mem, masks_arg, n, int(train))
        self._last_batch, self._dropout_applied = n, masks is not None  # C copied the masks into its block
        self._trained = bool(train)
        return y

    def _mask_arrays(self, n: int, masks: dict) -> list[np.ndarray]:
        """One (n, *in_shape) mask per dropout layer of the plan, in order; a layer missing from `masks`
        keeps everything (a mask of ones)."""
        arrays = []
        for name in self.plan.dropout_layers:
            shape = (n, *self.network.layer(name).in_shape)
            mask = masks.get(name)
            mask = np.ones(shape, self.dtype) if mask is None else np.ascontiguousarray(mask, dtype=self.dtype)
            self._c_input(mask, shape, f"dropout mask for '{name}'")
            arrays.append(mask)
        return arrays

    def backward(self, dy, input_grad: bool = True):
        """dy: (N, *output_shape), the gradient of the loss w.r.t. the last forward's output. Overwrites
        m.grads and returns dx: (N, *input_shape); with input_grad=False returns None and skips the
        first layer's input gradient (a training step does not need it)."""
        if input_grad:
            return super().backward(dy)
        if self._forward_batch is None:
            raise ValueError("backward() needs a forward() first: there is no saved forward pass to differentiate")
        self._backward(self._checked_array(dy, "dy", (self._forward_batch, *self.output_shape)), input_grad=False)
        return None

    def _backward(self, dy, input_grad: bool = True):
        """dy: (N, *output_shape) for the last forward's N -> dx: (N, *input_shape); overwrites grads.
        input_grad=False: dx is not wanted (None is returned)."""
        n = self._last_batch
        if n is None:
            raise ValueError("backward needs a forward first: there is no saved forward pass to differentiate")
        dy_ptr = self._c_input(dy, (n, *self.output_shape), "dy (for the last forward's batch)")
        if input_grad:
            dx = np.empty((n, *self.input_shape), self.dtype)
        else:  # a first layer that is not a convolution or dense layer still writes dx: give it scratch
            if self._dx_scratch is None or len(self._dx_scratch) < n:
                self._dx_scratch = np.empty((self._capacity, *self.input_shape), self.dtype)
            dx = self._dx_scratch[:n]
        self._c_backward(self._ptr(dx, writable=True), self._grad_mem, dy_ptr, self._param_mem, self._acts,
                         self._argmax, n, int(self._dropout_applied), int(input_grad), int(self._trained))
        return dx if input_grad else None

    def loss(self, y, target) -> tuple[float, np.ndarray]:
        """The base class's loss (same checks, same maths), computed in C in one pass."""
        y = self._checked_array(y, "y", (None, *self.output_shape))
        n = y.shape[0]
        dy = np.empty_like(y)
        if self.loss_kind == "cross_entropy":
            labels = np.ascontiguousarray(self._checked_labels(target, n), dtype=np.int64)
            value = self._lib.cross_entropy_loss(self._ptr(dy, writable=True), self._ptr(y),
                                                 self._ptr(labels, "int64_t[]"), n, self.output_shape[0])
        elif self.loss_kind == "nll":
            labels = np.ascontiguousarray(self._checked_labels(target, n), dtype=np.int64)
            value = self._lib.nll_loss(self._ptr(dy, writable=True), self._ptr(y), self._ptr(labels, "int64_t[]"), n,
                                       self.output_shape[0])
        else:
            target = self._checked_array(target, "target", y.shape)
            value = self._lib.mse_loss(self._ptr(dy, writable=True), self._ptr(y), self._ptr(target), y.size)
        return float(value), dy


# ---- cnnc.load(path, backend="c") --------------------------------------------------------------------
def load_c_model(path, model: str | None = None, dtype: str = "float32", seed: int = 0, **options) -> CModel:
    """path: a .cnn file, or a directory written by `cnnc compile`."""
    _check_options(options)
    if Path(path).is_dir():
        return load_compiled_directory(Path(path), model, check_dtype(dtype), seed, **options)
    return CModel(read_network(path, model), dtype, seed, **options)  # which checks the dtype


# ---- cnnc compile: a directory holding the C, the module, the spec and a manifest -----------------
DIR_MANIFEST = "manifest.json"
DIR_FORMAT = "cnnc-compile-2"  # another format (an older cnnc's) is refused: compile the directory again


def compile_to_directory(path, out_dir=None, model: str | None = None, dtype: str = "float32", emit_c: bool = False,
                         **options) -> list[Path]:
    """Write MODEL.c (with the kernel headers it includes, in kernels/), the spec, a manifest and (unless
    emit_c) the built module into out_dir (None: build/MODEL under the current directory).
    Returns the paths written."""
    _check_options(options)
    dtype = check_dtype(dtype)
    path = Path(path)
    text = read_source(path)
    network = select(_networks(text, path), model, str(path))
    out = Path(out_dir) if out_dir else Path("build") / network.name
    refuse_unsupported([network])
    source = generate(network, dtype)
    source_id = c_build.source_key([network], dtype)
    build_options = {k: v for k, v in options.items() if k != "cache_dir"}
    manifest = {"format": DIR_FORMAT, "cnnc": __version__, "model": network.name, "dtype": dtype,
                "spec_file": path.name, "c_file": f"{network.name}.c", "options": build_options,
                "source_key": source_id, "source_sha256": _sha256(source.text), "module_file": None}
    if out.exists() and not out.is_dir():
        raise CnncError(f"{out}: exists and is not a directory")
    previous = _read_dir_manifest(out) if out.is_dir() else None
    written = [out / manifest["spec_file"], out / manifest["c_file"]]
    check_distinct({"the C file": written[1], "the manifest": out / DIR_MANIFEST,
                    "the spec's copy": None if written[0].resolve() == path.resolve() else written[0]},
                   {"the spec": path})
    atomic_write_text(written[0], text)
    atomic_write_text(written[1], source.text)
    for name, header in source.headers:  # the kernel headers MODEL.c includes, so that it compiles on its own
        written.append(out.joinpath(*name.split("/")))
        written[-1].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(written[-1], header)
    if not emit_c:
        built = c_build.build(source_id, lambda: source, cache_dir=options.get("cache_dir"), **build_options)
        so = _module_file(built)
        target = out / so.name
        atomic_write_bytes(target, so.read_bytes())
        written.append(target)
        opts = c_build.BuildOptions.from_options(**build_options)
        manifest.update(module_file=so.name, module_sha256=c_build.file_sha256(target), key=built.key,
                        abi=sysconfig.get_config_var("EXT_SUFFIX"),
                        cpu=c_build.cpu_signature() if opts.native else None)
    atomic_write_text(out / DIR_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    written.append(out / DIR_MANIFEST)
    stale = previous.get("module_file") if previous else None
    if isinstance(stale, str) and stale and stale != manifest["module_file"] and Path(stale).name == stale:
        (out / stale).unlink(missing_ok=True)
    return written


def _networks(text: str, path: Path):
    from ..frontend import network_list_from_text

    return network_list_from_text(text, str(path))


def _module_file(built: c_build.Built) -> Path:
    manifest = c_build.read_manifest(built.directory)
    if manifest is None or not isinstance(manifest.get("module_file"), str):
        raise CnncError(f"the C module cache entry {built.directory} disappeared while in use (another process "
                        f"pruned or deleted it); run the command again")
    return built.directory / Path(manifest["module_file"]).name


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _read_dir_manifest(directory: Path) -> dict | None:
    """The directory's manifest when it is one `cnnc compile` writes (checked: `_manifest_problem`), else None."""
    manifest = c_build.read_json(directory / DIR_MANIFEST)
    return manifest if _manifest_problem(manifest) is None else None


def _is(value, kind) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _manifest_problem(manifest) -> str | None:
    """What is wrong with a `cnnc compile` manifest (None: nothing). A manifest comes from a directory that
    may have been copied from anywhere, so every field load_compiled_directory reads is checked here."""
    if not isinstance(manifest, dict):
        return f"it holds {type(manifest).__name__ if manifest is not None else 'no JSON object'}, not a JSON object"
    if manifest.get("format") != DIR_FORMAT:
        return f"its format {str(manifest.get('format'))[:40]!r} is not {DIR_FORMAT}"
    for name in ("model", "spec_file"):
        if not _is(manifest.get(name), str) or not manifest[name]:
            return f"'{name}' must be a non-empty string; got {_shown(manifest.get(name))}"
    if Path(manifest["spec_file"]).name != manifest["spec_file"] or manifest["spec_file"] in (".", ".."):
        return f"'spec_file' must name a file in the directory; got {_shown(manifest['spec_file'])}"
    if manifest.get("dtype") not in DTYPES:
        return f"'dtype' must be one of {', '.join(DTYPES)}; got {_shown(manifest.get('dtype'))}"
    options = manifest.get("options", {})
    if not isinstance(options, dict):
        return f"'options' must be a JSON object; got {_shown(options)}"
    unknown = sorted(set(options) - set(BUILD_OPTIONS) | ({"cache_dir"} & set(options)))
    if unknown:
        return f"'options' holds {', '.join(map(repr, unknown))}; build options are {', '.join(BUILD_OPTIONS[1:])}"
    if not all(isinstance(options.get(k, True), bool) for k in ("openmp", "native")):
        return f"'options' openmp and native must be true or false; got {_shown(options)}"
    try:
        c_build.BuildOptions.from_options(**options)
    except ValueError as e:
        return f"'options' are not valid build options ({e})"
    for name in ("source_key", "abi", "cpu"):
        if manifest.get(name) is not None and not _is(manifest[name], str):
            return f"'{name}' must be a string; got {_shown(manifest[name])}"
    if manifest.get("module_file") is not None:
        for name in ("module_file", "module_sha256", "key"):
            if not _is(manifest.get(name), str) or not manifest[name]:
                return f"'{name}' must be a non-empty string (the manifest names a module); got {_shown(manifest.get(name))}"
    return None


def _shown(value) -> str:
    text = json.dumps(value) if value is not None else "nothing"
    return text if len(text) <= 60 else text[:57] + "..."


def load_compiled_directory(directory: Path, model: str | None, dtype: str, seed: int, **options) -> CModel:
    """Load what `cnnc compile` wrote. The module there is imported directly (no compiler needed) when
    it was built from the C this cnnc would generate (same `source_key`: same network, dtype, templates
    and code generator) for this Python and, with -march=native, this CPU; otherwise the spec stored
    beside it is compiled through the cache."""
    path = directory / DIR_MANIFEST
    if not path.is_file():
        raise CnncError(f"{directory}: not a directory written by `cnnc compile` (it has no {DIR_MANIFEST})")
    manifest = c_build.read_json(path)
    if manifest is None:
        raise CnncError(f"{path}: damaged: not readable JSON (not UTF-8, not JSON, or nested too deeply); "
                        f"run `cnnc compile` again to rewrite the directory")
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise CnncError(f"{path}: damaged or not written by `cnnc compile`: {problem}; run `cnnc compile` again "
                        f"to rewrite the directory")
    if model is not None and model != manifest["model"]:
        raise CnncError(f"{directory} holds model '{manifest['model']}', not '{model}'")
    if dtype != manifest["dtype"]:
        raise CnncError(f"{directory} was compiled for {manifest['dtype']}; load it with dtype='{manifest['dtype']}' "
                        f"or compile it again with --dtype {dtype}")
    spec = directory / Path(manifest["spec_file"]).name
    network = read_network(spec, manifest["model"])
    plans = plan_networks([network], dtype)
    source_id = c_build.source_key([network], dtype)
    built = _directory_module(directory, manifest, source_id)
    if built is None:
        build_options = {**manifest.get("options", {}), **{k: v for k, v in options.items() if k != "cache_dir"}}
        built = c_build.build(source_id, lambda: generate(network, dtype), cache_dir=options.get("cache_dir"),
                              **build_options)
    return CModule(built, plans, dtype).model(network.name, seed)


def _directory_module(directory: Path, manifest: dict, source_id: str) -> c_build.Built | None:
    module_file = manifest.get("module_file")
    if not module_file:
        return None  # --emit-c: no module
    fits = (manifest.get("source_key") == source_id and manifest.get("abi") == sysconfig.get_config_var("EXT_SUFFIX")
            and manifest.get("cpu") in (None, c_build.cpu_signature()))
    so = directory / Path(module_file).name
    if not fits or not so.is_file() or c_build.file_sha256(so) != manifest.get("module_sha256"):
        return None
    try:
        module = c_build.import_module_file(c_build.module_name(manifest["key"]), so)
    except ImportError:
        return None
    return c_build.Built(module.ffi, module.lib, manifest["key"], directory)


__all__ = ["CModel", "CModule", "compile_networks", "load_c_model", "compile_to_directory"]
