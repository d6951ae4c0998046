"""The plan runner of the generated-code backends (emu, cuda), and what every backend shares:
binding symbolic dimensions, deferred results, label checks, the mode words, launch limits.

It imports no backend: `interp`, `emu` and `cuda` import it, and `backends.py` (the table of
backends by name) imports them.
"""
from __future__ import annotations

import numpy as np

from ..codegen import generate
from ..codegen.plan import BUFFER_DTYPE, RNG_BUFFER
from ..codegen.sizes import evaluate
from ..ir.errors import DlcError
from ..ir.graph import Graph
from ..ir.ops import COMMUNICATES, OPS, STORED, label_operands, out_of_range, range_error
from ..ir.precision import widen_bf16
from .numerics import nonfinite, numerics_error

MAX_PENDING = 256  # deferred runs held before their values are brought down anyway


def input_shapes(graph) -> list:
    """[(input, declared shape)]: computed once per backend (graph.inputs sorts the graph)."""
    return [(n, graph.type(n).shape) for n in graph.inputs]


def bind_dims(shapes: list, feeds: dict) -> dict[str, int]:
    """Values of the symbolic dims (N) from the inputs that were fed."""
    dims = {}
    for n, shape in shapes:
        if n in feeds:
            for d, v in zip(shape, np.shape(feeds[n])):
                if isinstance(d, str):
                    dims[d] = int(v)
    return dims


class Fetched:
    """What one run hands back, on its way to the host: `result()` -> {root: array}. A run made
    with `defer=True` has only queued its values; the first `result()` of any deferred run waits
    for the device once and brings every queued run's values down together, so a caller that
    reads the loss every k steps waits once per k steps."""

    def __init__(self, backend=None, values: dict | None = None, staged: dict | None = None):
        self._backend, self._values, self.staged = backend, values, staged

    def result(self) -> dict:
        if self._values is None:
            self._backend._resolve()
        return self._values


def check_labels(checks, feeds) -> None:
    """Class labels and token ids must be in range: a kernel cannot raise, so the backends check
    first."""
    for labels, bound, loc, op_name in checks:
        lab = feeds.get(labels)
        bad = None if lab is None else out_of_range(lab, bound)
        if bad is not None:
            raise DlcError(range_error(op_name, bad, bound), loc)


def label_checks(g: Graph) -> list:
    """(indices input, bound, location, op) for every operand an op declares to hold indices
    (`OpDef.labels`: softmax_xent's labels, embedding's ids) that is fed from an input."""
    return [(labels, bound, g.loc(n), g.op(n)) for labels, bound, n in label_operands(g)
            if isinstance(bound, int) and OPS[g.op(labels)].holds == "input"]


def mode_words(training: bool, rng) -> tuple[int, int, int]:
    """The run's [seed, step, training] words, which kernels of ops with the TRAINING or RANDOM
    effect read (`@rng`): in training, `rng=(seed, step)` keys the random numbers."""
    if not training:
        return 0, 0, 0
    seed, step = rng if rng is not None else (0, 0)
    return int(seed) & 0xFFFFFFFF, int(step) & 0xFFFFFFFF, 1


class BufferState:
    """The plan runner shared by the generated-code backends (emu, cuda).

    Params and optimizer state live in buffers allocated once (`self._persistent`), inputs and
    temporaries once per batch size; values for names the graph does not hold are kept aside.
    A run binds the plan's launches to those buffers once per (roots, commit, fetch, batch
    size) (`_program`): the step's launches, copies of the fetched values into output buffers,
    then the commits. What a step computes (`roots`) and what it hands back (`fetch`) are
    separate lists: params and state stay where the backend keeps them until read. An evaluation
    run's launches of values computed from stored values alone (`Graph.eval_constants`: batch
    norm folded into the weights) are a separate list, run only when the state has changed since
    this program last ran them (a commit or `set_state` counts as a change).

    A backend supplies the primitives: `_alloc`, `_upload`, `_download`, `_bind` (a launch's
    arguments in its own form), `_launch`, `_copy` (buffer to buffer), `_finite`, `_stage` and
    `_collect` (a fetched value on its way out, then on the host), `_wait` (for the device)."""

    waits = False  # whether `_wait` waits for a device (counted as a host sync)
    comm = None    # the run's communicator (runtime/collectives.py), handed to ops that communicate

    def _start(self) -> None:
        """Allocate the params, state and dropout key; after `_prepare` and the backend's setup."""
        self._persistent = {b.name: self._alloc(b.shape, BUFFER_DTYPE[b.dtype])
                            for b in self.module.buffers.values() if _stored(b)}
        self._rng = self._alloc([3], np.uint32)  # [seed, step, training]: the mode, read by the kernels
        self._reads_mode = RNG_BUFFER in self.module.buffers  # of ops with the TRAINING or RANDOM effect
        self._rng_words = (0, 0, 0)
        self._extra: dict[str, np.ndarray] = {}
        self._per_dims: dict = {}
        self._programs: dict = {}
        self._needs: dict = {}
        self._pending: list[Fetched] = []
        self._labels = label_checks(self.graph)
        # the evaluation form's values computed from stored values alone (batch norm folded into
        # the weights): launched by an evaluation run only when the state changed since that run
        # last computed them (`_version` counts changes: commits and set_state)
        self._constants = self.graph.eval_constants()
        self._version = 0
        # what runs ask of the host, counted: waits for the device, bytes down, key uploads
        self.counters = {"runs": 0, "syncs": 0, "d2h_bytes": 0, "h2d_copies": 0}

    def _launches(self, need, env: dict, dims: dict):
        """The plan's launches of the nodes in `need` at these symbol values, as (launch, grid,
        ints): ints are what the kernel takes after its buffers, the symbols' values and then the
        launch's consts. Launches over empty tensors are left out; a shape no GPU runs is an error."""
        for n in need:
            if n in self.module.node_buffer and self.module.node_buffer[n] not in env:  # (fused: no buffer)
                raise DlcError(f"the size of a dimension of '{n}' is unknown (feed an input that has it)")
        for l in self.module.launches:
            if l.node not in need:
                continue
            grid = tuple(evaluate(x, dims) for x in l.grid)
            check_launch(l.kernel, grid, l.block, l.shared)
            if min(grid) <= 0:
                continue  # an empty tensor: nothing to compute
            yield l, grid, [dims[d] for d in l.dims] + list(l.consts)

    # -- what a backend supplies --------------------------------------------------------------
    def _alloc(self, shape, dtype):
        raise NotImplementedError

    def _upload(self, buf, v: np.ndarray) -> None:
        raise NotImplementedError

    def _download(self, buf) -> np.ndarray:
        raise NotImplementedError

    def _bind(self, launch, grid, ints: list, env: dict):
        raise NotImplementedError

    def _launch(self, bound) -> None:
        raise NotImplementedError

    def _copy(self, dst, src) -> None:
        raise NotImplementedError

    def _finite(self, buf) -> bool:
        return not nonfinite(values(self._download(buf)))

    def _stage(self, buf):
        """A fetched value kept past this run (later runs overwrite the output buffers)."""
        return self._download(buf)

    def _collect(self, staged) -> np.ndarray:
        """A staged value's host array (its copy may complete only at the next `_wait`)."""
        return staged

    def _release(self, staged) -> None:
        pass

    def _wait(self) -> None:
        pass

    # -- the shared runner ----------------------------------------------------------------------
    def run(self, roots, feeds: dict[str, np.ndarray], commit: bool = False, dims=None, training: bool = False,
            rng: tuple[int, int] | None = None, fetch=None, defer: bool = False):
        """Evaluate `roots` from `feeds`; with `commit`, apply the assignments afterwards.
        `training` chooses the mode; in training, dropout draws its Philox mask from `rng=(seed, step)`.
        Only the values in `fetch` (default: every root) come back to the host: {root: array}.
        `defer=True` returns a `Fetched` at once, without waiting for the device."""
        roots = tuple(roots)
        fetch = roots if fetch is None else tuple(fetch)
        dims = dict(dims or self._dims(feeds))
        env = self._buffers(dims)
        missing = [n for n in self._inputs_needed(roots) if n not in feeds]
        if missing:
            raise DlcError(f"missing input '{missing[0]}' : {self.graph.type(missing[0])}")
        check_labels(self._labels, feeds)
        self._check_roots(roots, commit)
        prog = self._program(roots, dims, env, commit, fetch)
        prep = prog["prep"]
        for name, v in feeds.items():
            if name in env:
                buf = env[name]
                v = np.asarray(v, dtype=buf.dtype)
                if v.shape != buf.shape:
                    raise DlcError(f"input '{name}' should have shape {list(buf.shape)}, found {list(v.shape)}")
                self._upload(buf, v)
        words = mode_words(training, rng)
        if self._reads_mode and words != self._rng_words:  # uploaded only when a kernel reads it and it changed
            self._upload(self._rng, np.array(words, np.uint32))
            self._rng_words = words
            self.counters["h2d_copies"] += 1
        if prep["ops"] and prep["at"] != self._version:  # the weights changed: fold them again
            self._execute(prep)
            prep["at"] = self._version
        self._execute(prog)
        if commit:
            self._version += 1
        self.counters["runs"] += 1
        out = Fetched(self, staged={r: self._stage(prog["outs"][r]) for r in fetch})
        self._pending.append(out)
        if not defer:
            return out.result()
        if len(self._pending) >= MAX_PENDING:
            self._resolve()
        return out

    def _execute(self, prog) -> None:
        check, env = self.check_numerics, prog["env"]
        for kind, *what in prog["ops"]:
            if kind == "launch":
                bound, l = what
                self._launch(bound)
                if check:
                    self._check_launch(l, env, prog["dims"])
            elif kind == "host":
                self._host(*what)
            else:
                self._copy(*what)

    def _host(self, l, env) -> None:
        """A plan step with no kernel (family `host`, codegen/host.py): the node's reference on the
        host, its operands brought down (after the kernels before it) and its value sent back
        into its buffer; an op that communicates gets the run's communicator."""
        d = OPS[l.op]
        args = [values(self._download(env[b])) for b in l.args[1:]]
        self._wait()
        attrs = dict(self.graph.attrs(l.node))
        if d.has(COMMUNICATES):
            attrs["comm"] = self.comm
        out = env[l.args[0]]
        self._upload(out, np.asarray(d.ref(*args, **attrs), dtype=out.dtype).reshape(out.shape))

    def _resolve(self) -> None:
        """Every deferred run's values to the host, with one wait for the device."""
        pending, self._pending = self._pending, []
        hosts = [{r: self._collect(s) for r, s in f.staged.items()} for f in pending]
        self._wait()
        if self.waits:
            self.counters["syncs"] += 1
        for f, got in zip(pending, hosts):
            self.counters["d2h_bytes"] += sum(v.nbytes for v in got.values())
            for s in f.staged.values():
                self._release(s)
            f._values, f.staged = {r: values(v) for r, v in got.items()}, None

    def _inputs_needed(self, roots) -> list[str]:
        need = self._needs.get(roots)
        if need is None:
            anc = self._upstream(roots)
            need = self._needs[roots] = [n for n in self.graph.inputs if n in anc]
        return need

    def _upstream(self, roots) -> set[str]:
        """The nodes a run of `roots` computes: their upstream, and where it holds one of several
        sibling reductions that one kernel computes together (-O2, rule `siblings`: the
        reductions and the arithmetic on their results), all of them with what they read, so that the kernel runs (it is launched for its last reduction) and
        every value it loads has been computed."""
        g = self.graph
        need = g.upstream(roots)
        sets = [ms for rule, ms in g.meta.groups.values() if rule == "siblings"]
        grew = True
        while grew:
            grew = False
            for s in sets:
                if any(m in need for m in s) and not all(m in need for m in s):
                    need |= g.upstream(s)
                    grew = True
        return need

    def _buffers(self, dims: dict) -> dict:
        """Every buffer of the plan at these symbol values: params and state, and the inputs and
        temps of this batch size (allocated on first use); those of inputs not fed are left out."""
        key = tuple(sorted(dims.items()))
        env = self._per_dims.get(key)
        if env is None:
            env = dict(self._persistent, **{RNG_BUFFER: self._rng})
            for b in self.module.buffers.values():
                if b.kind in ("input", "temp"):
                    if any(isinstance(d, str) and d not in dims for d in b.shape):
                        continue  # depends on an input not fed: not needed by this run
                    env[b.name] = self._alloc([dims[d] if isinstance(d, str) else d for d in b.shape],
                                              BUFFER_DTYPE[b.dtype])
            self._per_dims[key] = env
        return env

    def _program(self, roots, dims, env, commit, fetch) -> dict:
        """One run, bound to this batch size's buffers: the step's launches, copies of the wanted
        values into output buffers (a later run overwrites temps), then the commits and copies of
        the values the in-place update writes."""
        key = (roots, commit, fetch, tuple(sorted(dims.items())))
        prog = self._programs.get(key)
        if prog is not None:
            return prog
        g, values = self.graph, self.module.node_buffer
        step, commits, prep = [], [], []
        for l, grid, ints in self._launches(self._upstream(roots), env, dims):
            bound = ("host", l, env) if l.host else ("launch", self._bind(l, grid, ints, env), l)
            (commits if l.phase == "commit" else prep if l.node in self._constants else step).append(bound)
        # a reshape (or an assign) shares its operand's buffer; its output has its own shape
        outs = {r: self._alloc(g.type(r).concrete(dims), env[values[r]].dtype) for r in fetch}
        late = self.module.after_commit  # values the in-place update writes: copied after it
        ops = step + [("copy", outs[r], env[values[r]]) for r in fetch if r not in late]
        if commit:
            ops += commits + [("copy", outs[r], env[values[r]]) for r in fetch if r in late]
        prog = self._programs[key] = {"key": key, "ops": ops, "outs": outs, "env": env, "dims": dims,
                                      "prep": {"key": key + ("prep",), "ops": prep, "env": env, "at": None}}
        return prog

    def _check_launch(self, l, env, dims: dict) -> None:
        """--check-numerics: the buffers launch `l` wrote (its output; an update kernel's targets),
        checked right after it, before a later launch reuses them. A 16-bit output is read as its
        BF16 values (the first elements of its buffer: memory planning may have given it an fp32
        slot of its size)."""
        for b in l.args[:max(1, l.writes)]:
            buf = env[b]
            if l.out_half:
                shape = self.graph.type(l.node).concrete(dims)
                buf = buf.view(np.uint16).reshape(-1)[:int(np.prod(shape))].reshape(shape)
            elif self.module.buffers[b].dtype != "f32":
                continue
            if not self._finite(buf):
                for a in l.args[l.writes:]:  # a param or state that was not finite to begin with
                    if _stored(self.module.buffers[a]) and not self._finite(env[a]):
                        host = self._download(env[a])
                        raise numerics_error(self.graph, l.node, nonfinite(host), host, source=a)
                host = values(self._download(buf))
                raise numerics_error(self.graph, l.node, nonfinite(host), host, kernel=l.kernel)

    # -- state -----------------------------------------------------------------------------------
    def _prepare(self, graph: Graph, float_dtype, available, reuse: bool | None = None) -> None:
        """What both generated-code backends do first: float32 only, the backend can run here
        (`available()` -> (ok, why)), the module generated from the graph (`reuse`: memory
        planning, by default at -O2; `dlc diff` turns it off so that every value it compares is
        kept in a buffer of its own)."""
        if np.dtype(float_dtype) != np.float32:
            raise DlcError(f"the {self.name} backend computes in float32, not {np.dtype(float_dtype).name} "
                           "(use the interp backend for float64)")
        ok, why = available()
        if not ok:
            raise DlcError(f"backend '{self.name}' cannot run here: {why}")
        self.graph = graph
        self.module = generate(graph, reuse=reuse)

    def keeps(self, n: str) -> bool:
        """Whether `run` can hand out node `n`'s value: at -O2 a fused group's inner values live
        only in registers and a planned buffer is overwritten by later values."""
        return n in self.module.node_buffer and n not in self.module.reused

    def _check_roots(self, roots, commit: bool) -> None:
        for r in roots:
            if not self.keeps(r):
                raise DlcError(f"%{r} is not kept by this compiled step (fused into a kernel, or its buffer "
                               f"reused, at -O2): ask for it at -O1")
            if r in self.module.after_commit and not commit:
                raise DlcError(f"%{r} is written in place by the optimizer update: it exists only after a commit")

    def set_state(self, values: dict[str, np.ndarray]) -> None:
        self._version += 1  # values computed from the state are stale
        for k, v in values.items():
            if k in self._persistent:
                buf = self._persistent[k]
                v = np.asarray(v, dtype=buf.dtype)
                if v.shape != buf.shape:
                    raise DlcError(f"'{k}' should have shape {list(buf.shape)}, found {list(v.shape)}")
                self._upload(buf, v)
            else:
                self._extra[k] = np.array(v, dtype=np.float32)
        self._wait()

    def get_value(self, k: str) -> np.ndarray:
        """One param or state, downloaded on its own (reading `m.params["w1"]` moves w1 only)."""
        if k in self._persistent:
            v = self._download(self._persistent[k])
            self._wait()
            return v
        return self._extra[k].copy()

    def get_state(self) -> dict[str, np.ndarray]:
        out = {k: self._download(v) for k, v in self._persistent.items()}
        self._wait()
        out.update({k: v.copy() for k, v in self._extra.items()})
        return out

    def _dims(self, feeds) -> dict[str, int]:
        if getattr(self, "_input_shapes", None) is None:
            self._input_shapes = input_shapes(self.graph)
        return bind_dims(self._input_shapes, feeds)


def values(a: np.ndarray) -> np.ndarray:
    """A buffer's contents as the values they hold: a 16-bit BF16 buffer's (uint16, codegen/storage.py)
    widened to float32, any other as it is."""
    return widen_bf16(a) if a.dtype == np.uint16 else a


def _stored(buf) -> bool:
    """A plan buffer whose value lives from run to run: a source (the plan names the op) whose entry
    holds a param, optimizer state or model buffer."""
    return buf.kind in OPS and OPS[buf.kind].holds in STORED


# What a GPU accepts in a launch (compute capability 7.0 and later): the emulator refuses the
# same, so that a plan a GPU would reject fails on every machine, not only on the GPU.
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS = 1024
# Static shared memory a block may use: 48 KiB on every GPU since Volta. More (up to 163 KiB on
# sm_80, 227 KiB on sm_90) is only for dynamic shared memory after an opt-in, which dlc never emits.
MAX_STATIC_SHARED = 48 * 1024


def check_launch(kernel: str, grid, block, shared: int = 0) -> None:
    """A located error for a launch no NVIDIA GPU runs: its grid, its block, or `shared`, the
    static shared memory of a block in bytes (the plan's `shared`, codegen.shared.shared_bytes)."""
    for axis, (n, most) in enumerate(zip(grid, MAX_GRID)):
        if n > most:
            raise DlcError(f"kernel {kernel}: grid.{'xyz'[axis]} = {n} is more than a GPU launches ({most}); "
                           f"the batch or the tensor is too large for this kernel's launch shape")
    threads = int(np.prod(block))
    if threads > MAX_THREADS or any(b > m for b, m in zip(block, MAX_BLOCK)):
        raise DlcError(f"kernel {kernel}: a block of {list(block)} threads is more than a GPU runs "
                       f"({MAX_THREADS} in all, {list(MAX_BLOCK)} per axis)")
    if shared > MAX_STATIC_SHARED:
        raise DlcError(f"kernel {kernel}: {shared} bytes of static shared memory a block is more than a GPU "
                       f"gives ({MAX_STATIC_SHARED} bytes, 48 KiB); the kernel's __shared__ arrays are too large")
