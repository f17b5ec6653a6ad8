"""The dependency graph of a checked program (networkx), its text summary and DOT."""
from __future__ import annotations

import networkx as nx

from ..frontend.checked import Checked


def build_graph(checked: Checked) -> nx.DiGraph:
    g = nx.DiGraph(name=checked.program.name)
    for name in checked.order:
        v = checked.vars[name]
        g.add_node(name, kind=v.kind, distribution=v.dist, shape=tuple(v.type.shape),
                   dtype=v.type.base, support=v.support, discrete=v.discrete,
                   loops=[(l.var, l.size) for l in v.loops], conditional=v.conditional,
                   recursive=v.recursive, span=v.span)
    for name in checked.order:
        v = checked.vars[name]
        for r in sorted(v.reads):
            if r in g and r != name:
                g.add_edge(r, name, dependence="data")
        for r in sorted(v.control):
            if r in g and r != name and not g.has_edge(r, name):
                g.add_edge(r, name, dependence="control")
    return g


def summary(g: nx.DiGraph) -> str:
    lines = [f"model {g.graph.get('name', '')}: {g.number_of_nodes()} variables, "
             f"{g.number_of_edges()} edges"]
    for n, a in g.nodes(data=True):
        shape = "[" + ", ".join(map(str, a["shape"])) + "]" if a["shape"] else ""
        dist = f" ~ {a['distribution']}" if a["distribution"] else ""
        sup = f", support {a['support']}" if a["support"] is not None and a["kind"] != "arg" else ""
        flags = []
        if a["loops"]:
            flags.append("in " + ", ".join(f"for {v} < {n_}" for v, n_ in a["loops"]))
        if a["conditional"]:
            flags.append("conditional")
        if a.get("recursive"):
            flags.append("sequential")
        parents = [f"{p}{'' if d['dependence'] == 'data' else ' (control)'}"
                   for p, _, d in g.in_edges(n, data=True)]
        lines.append(f"  {a['kind']:<13} {n}{shape}: {a['dtype']}{dist}{sup}"
                     + (f" [{'; '.join(flags)}]" if flags else "")
                     + (f" <- {', '.join(parents)}" if parents else ""))
    return "\n".join(lines)


_SHAPES = {"latent": ("ellipse", ""), "observed": ("ellipse", "filled"),
           "deterministic": ("box", ""), "arg": ("box", "rounded")}


def to_dot(g: nx.DiGraph) -> str:
    """DOT text: latents as ellipses, observed filled, deterministic as boxes, args as
    rounded boxes, loops as labelled clusters with their size, control edges dashed."""
    def q(s):
        return '"' + str(s).replace('"', r'\"') + '"'
    out = [f"digraph {q(g.graph.get('name', 'model'))} {{", "  rankdir=TB;",
           '  node [fontname="Helvetica"];']
    clusters = {}
    for n, a in g.nodes(data=True):
        key = tuple(a["loops"])
        clusters.setdefault(key, []).append(n)

    def node_line(n, a):
        shape, style = _SHAPES[a["kind"]]
        label = n if not a["distribution"] else f"{n}\\n~ {a['distribution']}"
        extra = f", style={q(style)}, fillcolor=\"lightgrey\"" if style else ""
        return f"  {q(n)} [label={q(label)}, shape={shape}{extra}];"
    for ci, (key, nodes) in enumerate(clusters.items()):
        if not key:
            out.extend(node_line(n, g.nodes[n]) for n in nodes)
            continue
        for depth, (var, size) in enumerate(key):
            out.append(f"  subgraph {q(f'cluster_{ci}_{depth}_{var}')} {{")
            out.append(f"    label={q(f'for {var} in range({size})')}; style=rounded;")
        out.extend("  " + node_line(n, g.nodes[n]) for n in nodes)
        out.extend(["  }"] * len(key))
    for u, v, d in g.edges(data=True):
        style = " [style=dashed]" if d["dependence"] == "control" else ""
        out.append(f"  {q(u)} -> {q(v)}{style};")
    out.append("}")
    return "\n".join(out)
