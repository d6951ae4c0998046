"""ONNX import (`dlc import`): an ONNX model as readable `.dln` text plus its weights.

`import_model(path)` reads a ModelProto with the `onnx` package, checks it (a file that does not
parse or is cut short, an initializer whose data does not fill its shape, a graph with a cycle,
what `onnx.checker` refuses: each a `DlcError` naming the file), and walks its nodes in order:

- **Folding.** A node whose inputs are all known when importing (initializers, Constant nodes,
  the results of other folded nodes) is evaluated there and then, with onnx's reference
  evaluator, whatever its op: the shape arithmetic exporters write around a Reshape (Shape,
  Gather, Unsqueeze, Concat, Cast, ...) never reaches the `.dln`. A shape that holds the batch
  size is folded too: `Shape` of a tensor whose leading dimension is the batch gives the vector
  `[N, 64]`, and the few ops that move such vectors about (`SYMBOLIC`) keep the `N` in place, so
  `Reshape(x, Concat(Gather(Shape(x), 0), [-1]))` becomes `reshape(x, [N, -1])`.
- **Translation.** Every other node is one binding of the `.dln`, written by the node's entry in
  `RULES` (op type -> function), with a comment naming the ONNX node: `c1 = conv(x, 16, 3,
  padding = 1)   # onnx: Conv "conv1"`. Where a node is a layer of the prelude (a convolution
  with a bias, a Gemm or a MatMul with its bias, batch normalization, layer normalization, LRN)
  the binding calls the prelude function, named after the layer (the initializer `conv1.weight`
  names the binding `conv1`), and its weights are stored under the prelude's names (`conv1.w`,
  `conv1.b`); otherwise each initializer is a `param` (or, for running statistics, a `buffer`)
  named after the ONNX name, sanitised. Then `merge_chains` writes a value read once into its
  reader where both came from one source line or module (`h = relu(x @ w1 + b1)` for the nodes
  `h.matmul`, `h.add`, `h`), the comment listing every node.
- **Refusal.** A node that no entry translates is collected, not raised at once: the error lists
  every unsupported op type with its count and its first node's name, and nothing is written.

Types are tracked with the op registry's own shape rules (`infer_type`), so a binding's type is
exactly what the front end will find. The text is checked by compiling it, in `api.import_onnx`.
This module reads, checks and walks the graph; `onnx_import_ops.py` holds what each op becomes.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import networkx as nx
import numpy as np

from ..ir.errors import DlcError, file_error
from ..ir.registry import OPS, REQUIRED, infer_type
from ..ir.types import TensorType, fmt_shape
from .onnx_import_ops import BATCH, RULES, SYMBOLIC, Lazy, Tensor, Unsupported, attr_text, fmt_attr, fmt_number

OPSETS = (7, 21)     # the default-domain opsets read (as issue 21 asks; older ones changed Reshape, ...)
COMMENT_COLUMN = 44  # where the `# onnx: ...` comments of the bindings start
KEYWORDS = {"model", "def", "input", "param", "buffer", "output", "minimize", "with", "freeze", "train",
            "return", "true", "false", "scan"}  # the keywords, and scan (a call the front end treats apart)


def require_onnx():
    """The onnx module, or a DlcError that says how to install it."""
    try:
        import onnx
    except ImportError as e:
        raise DlcError(f"dlc import needs the onnx package, which is not installed ({e}): pip install 'dlc[onnx]'")
    return onnx


# -- reading and checking the file ------------------------------------------------------------------

def read_model(path):
    """The ModelProto in `path`, checked; a DlcError naming the file for anything wrong with it."""
    onnx = require_onnx()
    p = Path(path)
    if not p.exists():
        raise file_error(p, "no such file")
    if p.is_dir():
        raise file_error(p, "is a directory, expected an .onnx file")
    try:
        model = onnx.load_model(str(p))
    except PermissionError:
        raise file_error(p, "permission denied")
    except Exception as e:  # protobuf's DecodeError and friends: not a module dlc may name
        raise file_error(p, f"not a readable ONNX model: the file is cut short or is not an ONNX protobuf "
                            f"({type(e).__name__}: {e})")
    if not model.opset_import or not model.graph.output:
        raise file_error(p, "not an ONNX model: it declares no opset or no graph outputs (a truncated or "
                            "foreign file?)")
    _check_initializers(onnx, model, p)
    _sort_nodes(model, p)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise file_error(p, f"not a valid ONNX model: {first}")
    return model


def _check_initializers(onnx, model, p) -> None:
    """Every initializer holds as many values as its shape says."""
    for t in model.graph.initializer:
        want = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue  # loaded by onnx.load_model beside the file; numpy_helper checks it
        if t.HasField("raw_data"):
            try:
                size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            except (KeyError, TypeError):
                continue  # an element type dlc refuses later, where it is used
            have, unit = len(t.raw_data) / size, "values"
        else:
            try:
                field_name = onnx.helper.tensor_dtype_to_field(t.data_type)
            except (KeyError, TypeError):
                continue
            have, unit = len(getattr(t, field_name)), "values"
            if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
                have /= 2
        if have != want:
            raise file_error(p, f"initializer '{t.name}' has shape {fmt_shape(tuple(t.dims))} ({want} values) "
                                f"but holds {have:g} {unit}: the file is damaged")


def _sort_nodes(model, p) -> None:
    """Put the nodes in an order where each comes after what it reads, or refuse a cycle, naming it."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    g = nx.DiGraph()
    g.add_nodes_from(range(len(nodes)))
    g.add_edges_from((producer[x], i) for i, n in enumerate(nodes) for x in n.input if x in producer)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [f'{nodes[a].op_type} "{nodes[a].name or nodes[a].output[0]}"' for a, _ in cycle]
        raise file_error(p, "the graph has a cycle: " + " -> ".join(names + names[:1])
                         + " (each reads the one before it; an ONNX graph must be acyclic)")
    order = list(nx.lexicographical_topological_sort(g))
    if order != list(range(len(nodes))):
        del model.graph.node[:]
        model.graph.node.extend(nodes[i] for i in order)


# -- the import: what it makes, and the walk over the nodes -------------------------------------------

@dataclass
class Imported:
    """What `import_model` makes: the `.dln` text, the weights (params and buffers, by name), and
    what the summary says."""
    text: str
    weights: dict
    model: str
    params: list
    buffers: list
    inputs: dict            # .dln input name -> ONNX input name
    outputs: dict           # .dln output name -> ONNX output name
    ops: Counter            # ONNX op types translated
    folded: Counter         # ONNX op types folded at import time
    prelude: Counter = field(default_factory=Counter)  # prelude functions used

    @property
    def param_count(self) -> int:
        return sum(int(self.weights[p].size) for p in self.params)


def _reads(graph) -> list[str]:
    """The values the nodes of a subgraph (and of its subgraphs) read."""
    out = []
    for n in graph.node:
        out += [x for x in n.input if x]
        for att in n.attribute:
            for sub in ([att.g] if att.HasField("g") else []) + list(att.graphs):
                out += _reads(sub)
    return out


_UNKNOWN = object()  # the value of an unsupported node's output: its readers are skipped, not refused

MERGED_WIDTH = 60    # the longest `name = expr` that merging single-reader values writes
_WORD = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?![\w.])")  # a name in an expression (not `h` of `h.w`)


@dataclass
class _Binding:
    """One line of the model's body: `name = expr  # onnx: what + what ...` (`what`: (the order of
    the ONNX node(s) it names, their text)); `nodes`: the names of the ONNX nodes it came from;
    `fixed`: never merged."""
    name: str
    expr: str
    what: list
    nodes: tuple
    fixed: bool = False

    def line(self) -> str:
        return f"    {f'{self.name} = {self.expr}':<{COMMENT_COLUMN}}  # onnx: {' + '.join(w for _, w in self.what)}"


def _scope(node_name: str) -> str:
    """The part of an ONNX node's name that names the source line or module it came from: `h` of
    `h.matmul` and of `h` (`dlc export` names the nodes of binding `h` so), `/fc1` of
    `/fc1/MatMul` (PyTorch's module paths)."""
    node_name = re.sub(r"\.[0-9]+$", "", node_name)  # `h.mul.1`: dlc export's second Mul of binding h
    cut = max(node_name.rfind("."), node_name.rfind("/"))
    return node_name[:cut] if cut >= 0 else node_name


def _source(nodes) -> str | None:
    """The one source line or module that all these ONNX nodes came from, or None: a name S such
    that each node is S or in S's scope (`h.matmul`, `h.add` and `h` are binding `h`'s)."""
    for s in [_scope(n) for n in nodes] + list(nodes):
        if all(n == s or _scope(n) == s for n in nodes):
            return s
    return None


def _names(expr: str):
    """The Python AST of a .dln expression (its operators have Python's precedence: comparisons, then
    + -, then * / @, then unary minus), or None where it is not one."""
    import ast
    try:
        return ast.parse(expr, mode="eval")
    except SyntaxError:
        return None


def _elementwise_only(tree) -> bool:
    """Whether an expression is operators and calls of elementwise registry ops only: no prelude
    layer (it names its params after the binding) and no reshaping, pooling or convolution."""
    import ast
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func.id if isinstance(n.func, ast.Name) else None
            if f not in OPS or OPS[f].family != "elementwise":
                return False
        elif isinstance(n, ast.Attribute):
            return False  # a prelude layer's param (`h.w`)
    return True


def _is_layer(tree) -> bool:
    """Whether an expression is one call of a prelude layer (`linear(x, 64)`, `conv(x, 16, 3)`):
    a function that is not a registry op, its operands names and numbers."""
    import ast
    body = tree.body
    return isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id not in OPS


def merge_chains(lines: list, outputs: set) -> list:
    """Write a value read by exactly one later binding into that binding's expression, as its
    author wrote it (`h = relu(x @ w1 + b1)` for the three ONNX nodes `h.matmul`, `h.add`, `h`, not
    three lines), where both came from one source line or module (`_source`: `h`, and never `h`
    into `logits`), the value is operators and elementwise ops only, and the merged line
    stays short (`MERGED_WIDTH`); the comment lists every ONNX node merged, in order. Parentheses
    are kept only where the precedence needs them. A prelude layer merges into its activation the
    same way (`h1 = relu(linear(x, 64))` for `h1.matmul`, `h1.dense`, `h1`), the merged binding
    keeping the layer's name, which names its params."""
    import ast
    lines = list(lines)
    readers: dict = {}  # name -> the indices of the lines whose expression reads it
    for j, b in enumerate(lines):
        for w in set(_WORD.findall(b.expr)):
            readers.setdefault(w, set()).add(j)
    for i, b in enumerate(lines):  # one pass: a merge only moves a value forward, into a later line
        if b.fixed or b.name in outputs or len(readers.get(b.name, ())) != 1:
            continue
        j = next(iter(readers[b.name]))
        user = lines[j]
        if j <= i or user.fixed or _source(b.nodes) is None or _source(b.nodes + user.nodes) != _source(b.nodes):
            continue
        tree = _names(b.expr)
        if tree is None:
            continue
        layer = _is_layer(tree)
        if not layer and not _elementwise_only(tree):
            continue
        word = re.compile(rf"(?<![\w.]){re.escape(b.name)}(?![\w.])")
        user_tree = _names(user.expr)
        if user_tree is None or len(word.findall(user.expr)) != 1 or \
                sum(isinstance(n, ast.Name) and n.id == b.name for n in ast.walk(user_tree)) != 1:
            continue  # read twice, or as something else than a value (a setting's name)
        if layer and (user.name in outputs or not _elementwise_only(user_tree)):
            continue  # a layer takes in only its activation, and keeps its own name (its params')
        bare = word.sub(lambda _: b.expr, user.expr)
        wrapped = word.sub(lambda _: f"({b.expr})", user.expr)
        t_bare, t_wrapped = _names(bare), _names(wrapped)
        expr = bare if t_bare is not None and ast.dump(t_bare) == ast.dump(t_wrapped) else wrapped
        name = b.name if layer else user.name  # a layer keeps its name: `h = relu(linear(x, 64))`
        if len(f"{name} = {expr}") > MERGED_WIDTH:
            continue
        lines[j] = _Binding(name, expr, sorted(b.what + user.what), b.nodes + user.nodes)
        lines[i] = None
        for w in set(_WORD.findall(b.expr)):
            readers[w].discard(i)
            readers[w].add(j)
        del readers[b.name]
        if layer:  # the activation's readers now read the layer's name
            other = re.compile(rf"(?<![\w.]){re.escape(user.name)}(?![\w.])")
            for k in readers.get(user.name, ()):
                lines[k] = replace(lines[k], expr=other.sub(name, lines[k].expr))
            readers[name] = readers.pop(user.name, set())
    return [b for b in lines if b is not None]


class _Importer:
    def __init__(self, onnx, model, path, reserved=(), weights_name=None, train=False):
        self.onnx, self.model, self.path, self.weights_name = onnx, model, Path(path), weights_name
        self.train = train
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None or not OPSETS[0] <= self.opset <= OPSETS[1]:
            raise file_error(self.path, f"uses opset {self.opset} of the default ONNX domain; dlc imports opsets "
                                        f"{OPSETS[0]} to {OPSETS[1]} (onnx.version_converter can convert it)")
        self.reserved = set(KEYWORDS) | set(reserved) | {BATCH}
        self.used: set[str] = set()
        self.values: dict = {}          # ONNX value name -> Tensor, Lazy, np.ndarray (known when importing)
                                        # or _UNKNOWN (made by an unsupported node)
        self.decls: list[str] = []      # param and buffer lines
        self.lines: list = []           # the bindings (_Binding), in order
        self.weights: dict = {}
        self.params: list[str] = []
        self.buffers: list[str] = []
        self.as_param: dict = {}        # ONNX initializer name -> its param Tensor (made on first use)
        self.ops, self.folded, self.prelude = Counter(), Counter(), Counter()
        self.unsupported: dict = {}     # op type -> [count, first node name, why]
        self.absorbed: set[int] = set()  # nodes taken into an earlier node's binding (a bias Add)
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.consumers: dict = {}
        for i, n in enumerate(g.node):
            if n.op_type == "Identity" and n.input and n.input[0] in self.inits:
                continue  # PyTorch writes equal initializers once and copies: each copy is its own weight
            for x in n.input:
                if x:
                    self.consumers.setdefault(x, []).append(i)
            for att in n.attribute:  # a branch of an If reads outer values too
                for sub in ([att.g] if att.HasField("g") else []) + list(att.graphs):
                    for x in _reads(sub):
                        self.consumers.setdefault(x, []).append(-2)
        for o in g.output:
            self.consumers.setdefault(o.name, []).append(-1)

    # -- names ----------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new .dln name from an ONNX name: letters, digits and _, not a keyword or a function's
        name, not taken."""
        h = re.sub(r"^onnx::", "", hint)
        h = re.sub(r"_output_0", "", h)
        if h.startswith("/"):  # PyTorch's scopes, "/features/features.2/Mul": the module and the op
            parts = [x for x in h.split("/") if x]
            h = "_".join(parts[-2:-1] + [parts[-1].lower()]) if parts else h
        h = re.sub(r"[^A-Za-z0-9_]+", "_", h)
        h = re.sub(r"_+", "_", h).strip("_")
        if not h or h[0].isdigit():
            h = "v" + h
        if h in self.reserved:
            h += "_"
        name, i = h, 1
        while name in self.used:
            name, i = f"{h}_{i}", i + 1
        self.used.add(name)
        return name

    def layer_name(self, node, weight: str | None) -> str:
        """A binding for a layer: the initializer's layer (`conv1.weight` -> `conv1`, `h1.w` -> `h1`),
        else the node's output."""
        if weight:
            base = re.sub(r"[._](weight|w|kernel|gamma|scale)$", "", weight)
            if base != weight and re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") not in self.used:
                return self.fresh(base)
        return self.fresh(node.output[0] or node.name or node.op_type.lower())

    # -- values ---------------------------------------------------------------------------------
    def const(self, name: str):
        v = self.values.get(name)
        return v if isinstance(v, np.ndarray) else None

    def only_use(self, name: str) -> bool:
        """Whether the constant `name` is read by one node alone (so it can become that layer's
        weight; a folded copy of a shared initializer, as PyTorch writes them, counts as its own)."""
        return len(self.consumers.get(name, [])) == 1 and isinstance(self.values.get(name), np.ndarray)

    def operand(self, name: str, node, number: bool = True) -> tuple[str, TensorType]:
        """(text, type) of an operand of a binding: a tensor's name, a single-valued constant's
        number (where `number`: an elementwise op's operand, which broadcasts), or a constant
        array's param (made from the initializer or the folded value)."""
        v = self.values[name]
        if isinstance(v, Lazy):
            v = v.tensor()
        if isinstance(v, Tensor):
            return v.name, v.type
        if v.dtype == object:
            raise Unsupported(f"it reads the shape value '{name}' ({fmt_shape(tuple(v.tolist()))}) as data")
        if number and v.size == 1 and (v.ndim == 0 or name not in self.inits):  # a number (a folded [1] too)
            return fmt_number(v.reshape(()).astype(np.float64).item()), TensorType("f32", ())
        t = self.param_of(name, v)
        return t.name, t.type

    def param_of(self, name: str, v: np.ndarray) -> Tensor:
        if name not in self.as_param:
            pname = self.fresh(name)
            self.as_param[name] = self.declare(pname, v, "param", comment=f"onnx: {name}" if pname != name else "")
        return self.as_param[name]

    def finite(self, name: str, v) -> np.ndarray:
        """A weight as float32; NaN or infinity in it is an error naming it (no weights file of dlc
        may hold one: `--load` refuses them)."""
        a = np.asarray(v, dtype=np.float32)
        if not np.isfinite(a).all():
            raise file_error(self.path, f"the weight '{name}' holds NaN or infinity (a damaged or untrained file?)")
        return a

    def declare(self, name: str, v: np.ndarray, kind: str = "param", comment: str = "") -> Tensor:
        a = self.finite(name, v)
        t = TensorType("f32", tuple(int(d) for d in a.shape))
        init = " = he" if kind == "param" and a.ndim >= 2 else ""
        line = f"    {kind:<6} {name} : {t}{init}"
        self.decls.append(f"{line:<{COMMENT_COLUMN + 4}}  # {comment}" if comment else line)
        self.weights[name] = a
        (self.params if kind == "param" else self.buffers).append(name)
        return Tensor(name, t)

    def store(self, name: str, v: np.ndarray, kind: str = "param") -> None:
        """Weights of a prelude call (`conv1.w`), which the call itself declares."""
        self.weights[name] = self.finite(name, v)
        (self.params if kind == "param" else self.buffers).append(name)

    # -- bindings -------------------------------------------------------------------------------
    def bind(self, node, name: str, expr: str, t: TensorType, nodes=None, span: int = 0) -> Tensor:
        """`name = expr` with the comment naming the ONNX node(s) it came from (`span`: the count of a
        chain of nodes of which `nodes` are the first and the last)."""
        what = " + ".join(f'{n.op_type} "{n.name or n.output[0]}"' for n in (nodes or [node]))
        if span:
            what = what.replace(" + ", " ... ") + f" ({span} nodes)"
        names = tuple(n.name or n.output[0] for n in (nodes or [node]))
        self.lines.append(_Binding(name, expr, [(len(self.lines), what)], names))
        return Tensor(name, t)

    def call(self, node, op: str, operands: list, attrs: dict | None = None, name: str | None = None,
             nodes=None) -> Tensor:
        """`name = op(operands, attrs)`: a binding of one registry op, its type from the op's rule."""
        attrs = dict(attrs or {})
        t = self.infer(op, [o[1] for o in operands], attrs)
        first = next(iter(OPS[op].attrs), None)
        lead = []  # a required setting (reshape's shape, a pool's kernel) by position, as people write it
        if first is not None and OPS[op].attrs[first] is REQUIRED and first in attrs:
            lead = [fmt_attr(attrs.pop(first))]
        expr = f"{op}({', '.join([o[0] for o in operands] + lead)}{attr_text(attrs)})"
        return self.bind(node, name or self.fresh(node.output[0]), expr, t, nodes)

    def infer(self, op: str, types: list, attrs: dict) -> TensorType:
        return infer_type(op, list(types), OPS[op].complete_attrs(dict(attrs)))

    def binary(self, node, op: str, sym: str, a, b, name=None, nodes=None) -> Tensor:
        t = self.infer(op, [a[1], b[1]], {})
        wrap = lambda s: s if re.fullmatch(r"-?[A-Za-z0-9_.]+(e[-+]?[0-9]+)?", s) else f"({s})"
        return self.bind(node, name or self.fresh(node.output[0]), f"{wrap(a[0])} {sym} {wrap(b[0])}", t, nodes)

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> Imported:
        g = self.model.graph
        generic = ("", "main_graph", "torch_jit", "torch-jit-export", "graph")  # exporters' default names
        model_name = re.sub(r"[^A-Za-z0-9_]+", "_", self.path.stem if g.name in generic else g.name).strip("_")
        model_name = ("m" if not model_name or model_name[0].isdigit() else "") + model_name
        model_name += "_" if model_name in KEYWORDS else ""  # a model may share a function's name
        self.used.add(model_name)
        for t in g.initializer:
            self.values[t.name] = self.array(t)
        inputs, in_lines = {}, []
        for vi in g.input:
            if vi.name in self.inits:
                continue  # an initializer listed as an input too (IR version < 4)
            t = self.input_type(vi)
            name = self.fresh(vi.name)
            inputs[name] = vi.name
            self.values[vi.name] = Tensor(name, t)
            in_lines.append(f"    input  {name} : {t}" + (f"    # onnx: {vi.name}" if name != vi.name else ""))
        # the graph's outputs name their bindings
        self.out_names = {}
        for o in g.output:
            self.out_names[o.name] = self.fresh(o.name)
        for i, node in enumerate(g.node):
            if i in self.absorbed:
                continue
            self.node(i, node)
        if self.unsupported:
            items = sorted(self.unsupported.items(), key=lambda kv: (-kv[1][0], kv[0]))
            listed = "; ".join(f"{op} x{c} (first: \"{first}\"{': ' + why if why else ''})"
                               for op, (c, first, why) in items)
            total = sum(c for c, _, _ in self.unsupported.values())
            raise file_error(self.path, f"cannot import: {total} node{'s' * (total != 1)} of "
                                        f"{len(items)} op type{'s' * (len(items) != 1)} that dlc cannot "
                                        f"express: {listed}; nothing was written")
        outputs, out_lines, out_types = {}, [], {}
        for o in g.output:
            v = self.values.get(o.name)
            name = self.out_names[o.name]
            if isinstance(v, Lazy):
                v = v.tensor(name)
            if isinstance(v, np.ndarray):
                raise file_error(self.path, f"output '{o.name}' is a constant (it does not depend on any input); "
                                            "dlc models compute their outputs from their inputs")
            if v.name != name:  # an input or a param as an output: a binding of its own
                if name in self.weights or name in inputs:
                    name = self.fresh(o.name + "_out")
                self.lines.append(_Binding(name, f"{v.name} * 1.0", [(len(self.lines), f"graph output {o.name}")],
                                           (),
                                           fixed=True))
            outputs[name] = o.name
            out_lines.append(name)
            out_types[name] = (v.type, next((n.op_type for n in g.node if o.name in n.output), None))
        producer = " ".join(x for x in (self.model.producer_name, self.model.producer_version) if x)
        head = [f"# Imported from {self.path.name} by `dlc import` (ONNX opset {self.opset}"
                + (f", made by {producer}" if producer else "") + ").",
                (f"# Its weights: {self.weights_name} (`--load {self.weights_name}`); " if self.weights_name else
                 "# Its weights are in the .npz dlc import wrote with it (`--load`); ")
                + f"{sum(self.folded.values())} ONNX nodes were folded at import time.",
                f"model {model_name} {{"]
        tail = self.training_lines(out_lines, out_types, in_lines) if self.train else []
        bindings = [b.line() for b in merge_chains(self.lines, set(out_lines))]
        body = in_lines + ([""] + self.decls if self.decls else []) + [""] + bindings + [""]
        body.append(f"    output {', '.join(out_lines)}")
        body += tail
        text = "\n".join(head + body + ["}", ""])
        return Imported(text, self.weights, model_name, self.params, self.buffers, inputs, outputs, self.ops,
                        self.folded, self.prelude)

    def training_lines(self, out_lines: list, out_types: dict, in_lines: list) -> list:
        """`--train`: the labels input (appended to `in_lines`), a softmax cross-entropy of the one
        output and an optimizer, so that the imported classifier can be evaluated and fine-tuned."""
        if len(out_lines) != 1:
            raise file_error(self.path, f"--train: the model has {len(out_lines)} outputs "
                                        f"({', '.join(out_lines)}); --train adds a classifier's loss to a "
                                        "model with one output, its logits")
        out = out_lines[0]
        t, op = out_types[out]
        if len(t.shape) != 2 or t.shape[0] != BATCH or not isinstance(t.shape[1], int) \
                or t.shape[1] < 2:
            raise file_error(self.path, f"--train: the output {out} is {t}; --train adds a classifier's loss, "
                                        f"which reads logits f32[{BATCH}, C] of C >= 2 classes")
        if op in ("Softmax", "LogSoftmax"):
            raise file_error(self.path, f"--train: the output {out} is ONNX's {op}, not logits; "
                                        "--train adds softmax_xent, which takes the scores before the softmax "
                                        "(import a model that ends at its last layer, or add the loss by hand)")
        labels, loss = self.fresh("y"), self.fresh("loss")
        in_lines.append(f"    {f'input  {labels} : i32[{BATCH}]':<{COMMENT_COLUMN}}  "
                        f"# added by --train: class numbers, 0 to the last layer's size - 1")
        return [f"    {f'{loss} = softmax_xent({out}, {labels})':<{COMMENT_COLUMN}}  # added by --train",
                f"    {'minimize ' + loss + ' with adam(lr = 0.001)':<{COMMENT_COLUMN}}  "
                f"# added by --train (`--lr` overrides)"]

    def array(self, t) -> np.ndarray:
        try:
            return self.onnx.numpy_helper.to_array(t)
        except Exception as e:
            raise file_error(self.path, f"initializer '{t.name}' cannot be read ({type(e).__name__}: {e})")

    def input_type(self, vi) -> TensorType:
        tt = vi.type.tensor_type
        ints = (self.onnx.TensorProto.INT32, self.onnx.TensorProto.INT64)  # token ids, as i32
        if not vi.type.HasField("tensor_type") or tt.elem_type not in (self.onnx.TensorProto.FLOAT, *ints):
            kind = (self.onnx.helper.tensor_dtype_to_string(tt.elem_type).removeprefix("TensorProto.")
                    if vi.type.HasField("tensor_type") else "not a tensor")
            raise file_error(self.path, f"input '{vi.name}' is {kind}; dlc imports float32 inputs, and int32 or "
                                        f"int64 ones as i32 (ids)")
        if not tt.HasField("shape"):
            raise file_error(self.path, f"input '{vi.name}' has no shape; dlc needs every size but the batch's")
        dims = []
        for k, d in enumerate(tt.shape.dim):
            if k == 0 and (d.HasField("dim_param") or not d.HasField("dim_value") or d.dim_value == 1):
                dims.append(BATCH)  # a symbolic leading dimension, or 1 (exported at batch 1): the batch
            elif d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                raise file_error(self.path, f"input '{vi.name}': dimension {k} is "
                                            f"{repr(d.dim_param) if d.dim_param else 'unknown'}; dlc needs a known "
                                            "size for every dimension but the first (the batch)")
        return TensorType("i32" if tt.elem_type in ints else "f32", tuple(dims))

    def node(self, i: int, node) -> None:
        ins = [self.values.get(x) if x else None for x in node.input]
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        op_type = f"{domain}.{node.op_type}" if domain else node.op_type
        present = [v for v in ins if v is not None]
        if any(v is _UNKNOWN for v in present):  # downstream of an unsupported node: listed if unsupported too
            if op_type not in RULES:
                self.refuse(node, op_type, "")
            for o in node.output:
                self.values[o] = _UNKNOWN
            return
        if not domain and node.op_type == "If" and isinstance(ins[0], np.ndarray) and ins[0].dtype != object:
            return self.inline_branch(node, bool(ins[0].reshape(-1)[0]))
        try:
            symbolic = any(isinstance(v, np.ndarray) and v.dtype == object for v in present)
            if (not domain and all(isinstance(v, np.ndarray) for v in present) and node.op_type not in _NO_FOLD
                    and not (symbolic and node.op_type not in SYMBOLIC and node.op_type in RULES)):
                outs = self.fold(node, ins)
                self.folded[op_type] += 1
            else:
                rule = RULES.get(op_type)
                if rule is None:
                    raise Unsupported("")
                outs = rule(self, i, node, ins, self.attributes(node))
                (self.folded if node.op_type == "Shape" else self.ops)[op_type] += 1
        except Unsupported as e:
            self.refuse(node, op_type, str(e))
            for o in node.output:
                self.values[o] = _UNKNOWN
            return
        except DlcError as e:
            raise file_error(self.path, f'node {node.op_type} "{node.name or node.output[0]}": {e.message}')
        for name, v in zip(node.output, outs):
            if name and v is not None:
                self.values[name] = v

    def inline_branch(self, node, cond: bool) -> None:
        """An If whose condition is known when importing (exporters test shapes so): the branch taken,
        its nodes imported in place, its outputs the If's."""
        branch = self.attributes(node)["then_branch" if cond else "else_branch"]
        self.folded["If"] += 1
        for sub in branch.node:
            self.node(-1, sub)
        for o, b in zip(node.output, branch.output):
            if o:
                self.values[o] = self.values.get(b.name, _UNKNOWN)

    def refuse(self, node, op_type: str, why: str) -> None:
        entry = self.unsupported.setdefault(op_type, [0, node.name or node.output[0], why])
        entry[0] += 1

    def attributes(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def result_name(self, node, k: int = 0) -> str:
        """The binding of output k: the graph output's name where it is one, else a fresh name."""
        o = node.output[k]
        return self.out_names.get(o) or self.fresh(o or node.name or node.op_type.lower())

    # -- folding --------------------------------------------------------------------------------
    def fold(self, node, ins) -> list:
        if any(v is not None and v.dtype == object for v in ins):
            rule = SYMBOLIC.get(node.op_type)
            if rule is None:
                raise Unsupported(f"it computes with the batch size {BATCH} at run time")
            return rule(self, node, ins, self.attributes(node))
        from onnx.reference import ReferenceEvaluator
        h = self.onnx.helper
        names = [x for x in node.input if x]
        graph = h.make_graph([node], "fold",
                             [h.make_tensor_value_info(x, h.np_dtype_to_tensor_dtype(self.values[x].dtype), None)
                              for x in names],
                             [h.make_empty_tensor_value_info(o) for o in node.output if o])
        opsets = [h.make_opsetid(o.domain, o.version) for o in self.model.opset_import]
        try:
            ref = ReferenceEvaluator(h.make_model(graph, opset_imports=opsets))
            outs = ref.run(None, {x: self.values[x] for x in names})
        except Exception as e:
            raise DlcError(f"could not be evaluated at import time ({type(e).__name__}: {e})")
        res = iter(np.asarray(v) for v in outs)
        return [next(res) if o else None for o in node.output]


_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def import_model(path, reserved=(), weights_name: str | None = None, train: bool = False) -> Imported:
    """Read, check and translate the ONNX model in `path` (see the module doc). `reserved`: names
    the `.dln` may not bind (the prelude's functions, the ops); `weights_name`: the weights file the
    header comment names."""
    onnx = require_onnx()
    model = read_model(path)
    return _Importer(onnx, model, path, reserved, weights_name, train).run()
