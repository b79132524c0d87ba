"""What a workflow file may hold beyond its schema, checked before any value is built.

- No YAML aliases (``*name`` of an ``&name`` anchor): nested aliases expand exponentially,
  so a few lines (a "billion laughs") would take minutes and gigabytes to build. The node
  tree PyYAML composes shares an anchor's node with its aliases, so :func:`first_alias`
  finds them without expanding anything.
- A problem quotes at most an :func:`excerpt` of a bad value: a value can be megabytes.
"""

from __future__ import annotations

import yaml  # type: ignore[import-untyped, unused-ignore]

__all__ = ["MAX_EXCERPT", "MAX_MESSAGE", "excerpt", "first_alias"]

MAX_EXCERPT = 120
"""Longest excerpt of a value quoted in a problem; a whole problem line is at most
:data:`MAX_MESSAGE` characters."""
MAX_MESSAGE = 400


def excerpt(text: str, limit: int = MAX_EXCERPT) -> str:
    """``text``, or its start and ``... (N characters)`` when longer than ``limit``."""
    if len(text) <= limit:
        return text
    return f"{text[: max(0, limit - 20)]}... ({len(text)} characters)"


def first_alias(root: yaml.Node) -> yaml.Node | None:
    """The first node reached twice in the document (an alias), or ``None``.

    PyYAML's composer gives an alias the very node object of its anchor, so a walk that
    never descends twice into one node finds every alias in time linear in the file.
    """
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return node
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                stack.extend((value, key))
    return None
