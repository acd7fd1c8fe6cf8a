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

# A real sweep file has tens of values and a few kB; these bounds only stop hostile or
# broken files, before the parser spends minutes and gigabytes on them.
MAX_BYTES = 1_000_000
MAX_NODES = 10_000
MAX_DEPTH = 50


class _BoundedLoader(yaml.SafeLoader):
    """Counts the nodes it composes and stops at :data:`MAX_NODES`, so a long plain list
    is refused as such after 10,000 values, not parsed whole first."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed += 1
        if self.composed > MAX_NODES:
            mark = self.peek_event().start_mark
            raise SweepFileError(
                f"{self.source}: more than {MAX_NODES:,} values (the limit, reached on line "
                f"{mark.line + 1}); a sweep needs far fewer: use a distribution (min/max) "
                "instead of a long values list"
            )
        return super().compose_node(parent, index)


def check_size(size: int, *, source: str) -> None:
    if size > MAX_BYTES:
        raise SweepFileError(
            f"{source}: {size:,} bytes, more than the {MAX_BYTES:,} a sweep file may have "
            "(a real one has a few kB)"
        )


def load_yaml(text: str, *, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing (one line naming ``source`` and the limit) a text
    over :data:`MAX_BYTES`, a document of more than :data:`MAX_NODES` values (written out
    or expanded from aliases), one that nests beyond :data:`MAX_DEPTH`, and a mapping
    with a key twice. YAML syntax errors are raised as ``yaml.YAMLError`` for the caller."""
    check_size(len(text.encode("utf-8", "surrogatepass")), source=source)
    loader = _BoundedLoader(text, source)
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
                _check_unique_keys(node, source)
                children = [part for pair in node.value for part in pair]
            sizes[id(node)] = 1 + sum(size(child, depth + 1) for child in children)
        return sizes[id(node)]

    return size(root, 0)


def _check_unique_keys(node: yaml.MappingNode, source: str) -> None:
    """YAML loaders keep the last of two equal keys without a word; a sweep file with
    ``alpha`` twice is a mistake either way, so name both lines."""
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            raise SweepFileError(
                f"{source}: line {line}: key {key.value!r} appears twice in one mapping "
                f"(lines {seen[key.tag, key.value]} and {line}); keep one"
            )
        seen[key.tag, key.value] = line
