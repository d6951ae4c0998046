"""Graphviz DOT export: a picture of the graph (`dot -Tsvg model.dot`)."""
from __future__ import annotations

from .graph import Graph

_COLOURS = {"input": "lightblue", "param": "khaki", "state": "wheat", "const": "gray90", "assign": "salmon"}


def _esc(s: str) -> str:
    """Text inside a DOT double-quoted string: backslashes and quotes escaped."""
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _label(*lines: str) -> str:
    """A quoted DOT label of several lines: each escaped, joined by DOT's `\\n` line break."""
    return '"' + "\\n".join(_esc(line) for line in lines) + '"'


def to_dot(g: Graph) -> str:
    def q(s: str) -> str:
        return '"' + _esc(s) + '"'

    out = [f"digraph {q(g.meta.name)} {{", "  node [shape=box, fontname=monospace, style=filled, fillcolor=white];"]
    order = g.order()
    pos = {n: i for i, n in enumerate(order)}
    for n in order:
        op = g.op(n)
        lines = [f"%{n}", f"{op} : {g.type(n)}"] + ([f"line {g.loc(n).line}"] if g.loc(n) else [])
        out.append(f"  {q(n)} [label={_label(*lines)}, fillcolor={_COLOURS.get(op, 'white')}];")
    for u, v, k in sorted(g.nx.edges(keys=True), key=lambda e: (pos[e[1]], e[2])):
        out.append(f"  {q(u)} -> {q(v)} [label={k}];")
    for name, v in g.meta.outputs.items():
        out.append(f"  {q('output ' + name)} [shape=oval, fillcolor=palegreen];")
        out.append(f"  {q(v)} -> {q('output ' + name)};")
    out.append("}")
    return "\n".join(out) + "\n"
