"""YAML for sweep files with bounds: no alias bombs, no runaway nesting (no torch here).

``yaml.safe_load`` builds aliases as shared references, so a few hundred bytes of nested
aliases load quickly, but everything downstream that copies or serialises the document
(the study stores the sweep file as JSON) expands them: 745 bytes once became a 12.8 MB
study. The node graph is measured as it would expand before anything is built.
"""

from __future__ import annotations

from typing import Any

import yaml

from endebias.sweeps.search_space import SweepFileError

# A real sweep file has tens of values; these bounds only stop hostile or broken files.
MAX_NODES = 10_000
MAX_DEPTH = 50


def load_yaml(text: str, *, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing (one line naming ``source``) a document that
    would expand to more than :data:`MAX_NODES` values or nests beyond :data:`MAX_DEPTH`.
    YAML syntax errors are raised as ``yaml.YAMLError`` for the caller to word."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            raise SweepFileError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
        if root is None:
            return None
        nodes = _expanded_size(root, source)
        if nodes > MAX_NODES:
            raise SweepFileError(
                f"{source}: YAML aliases expand this file to {nodes:,} values (at most "
                f"{MAX_NODES:,}); write the values out instead of nesting aliases"
            )
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Nodes of ``root`` with every alias expanded, counted without expanding: an alias is
    the same node object again, so each node's size is computed once."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise SweepFileError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        if id(node) not in sizes:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            sizes[id(node)] = 1 + sum(size(child, depth + 1) for child in children)
        return sizes[id(node)]

    return size(root, 0)
