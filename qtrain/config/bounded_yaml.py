"""The one YAML reader for configs. Every config text qtrain parses goes through it: a config file
(``qtrain train/simulate/run``, ``qtrain.init(path)``), a ``--set`` value, and a checkpoint's stored
``/config`` (which whoever edits a checkpoint can reseal with a valid digest).

``yaml.safe_load`` alone has no bounds, and issue 37 found each of these: 500 bytes of nested
anchors in ``model.kwargs`` ("billion laughs") grew past 1 GB when the config was copied; 100,000
nested brackets overflowed the stack of PyYAML's recursive composer (a 3,000-line traceback); a key
written twice silently kept its last value; a FIFO or ``/dev/zero`` was called "does not exist"; a
1 GB file was read whole. Here:

- a config file must be a regular file of at most ``MAX_CONFIG_BYTES``, checked before reading;
- nesting deeper than ``MAX_DEPTH`` is refused while composing, before the recursion gets deep;
- more than ``MAX_NODES`` nodes is refused, counted while composing and again as the tree is
  copied, aliases expanded (anchors and aliases stay allowed: YAML's own way to repeat a block);
- a key written twice in one mapping is refused with both lines;
- ``check_written``: an accepted config, written out whole as a run stores it (aliases expanded,
  every level indented), stays within these bounds, so config.yaml and checkpoints read back.

Each refusal is one :class:`ConfigError` that names the source, the item and the bound. The bounds
are far above any real config (the shipped ones nest 3 deep and hold about 200 nodes resolved).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from qtrain.config.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 100  # collections nested in one another, the top-level mapping included
MAX_NODES = 100_000  # scalars and collections, aliases expanded
MERGE = "tag:yaml.org,2002:merge"
# a config qtrain accepts is written out whole (OUT/config.yaml, a checkpoint's /config), aliases
# expanded and every key indented, and must read back within the bounds above; resolving the links
# then writes codec names and parameters where null was, a few hundred bytes and no new node
RESOLVED_MARGIN_BYTES = 4096


def read_config_file(path: Path, what: str = "config file") -> str:
    """The text of the config file ``path``: a regular file (a FIFO would block forever,
    ``/dev/zero`` stream without end) of at most ``MAX_CONFIG_BYTES``, in UTF-8."""
    from qtrain.data.base import regular_file

    try:
        regular_file(path, what)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(_too_big(path, what, size))
            data = f.read(MAX_CONFIG_BYTES + 1)  # the file may grow after the stat
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:  # grew since the stat
        raise ConfigError(_too_big(path, what, f"over {MAX_CONFIG_BYTES}"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text (UTF-8) YAML file (byte {exc.start} is 0x{exc.object[exc.start]:02x})"
        ) from None


def _too_big(path, what: str, size) -> str:
    return f"{what} {str(path)!r} is {size} bytes: a config is at most {MAX_CONFIG_BYTES} bytes (1 MiB)"


def load_yaml(text: str, source: str, at: tuple[str, ...] = (), nodes: int = MAX_NODES) -> tuple[Any, int]:
    """(the value of the one YAML document in ``text``, the nodes it counts), within the bounds.
    ``source`` starts every error (the file, ``--set ITEM``, ``CHECKPOINT: /config``); ``at`` is
    the key the text is the value of (``--set model.kwargs.a=...``: its nesting counts towards
    ``MAX_DEPTH``); ``nodes`` the node budget left (several ``--set`` share one)."""
    if len(at) > MAX_DEPTH:
        raise ConfigError(
            f"{source}: the key is nested more than {MAX_DEPTH} levels deep; a config nests at most "
            f"{MAX_DEPTH}"
        )
    loader = _BoundedLoader(text, source, at, nodes)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, 0
        count = _check_expansion(node, loader)
        return loader.construct_document(node), count
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{source}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        ) from None
    finally:
        loader.dispose()


def check_written(value, text: str, source: str) -> None:
    """Refuse a config whose written-out form ``text`` (of the plain ``value``: dicts, lists,
    scalars) would not read back: more bytes or nodes than a config may hold. The input bounds
    alone do not ensure it: 12 kB nesting a list of 6,000 numbers 97 levels deep write 1.2 MB."""
    size, limit = len(text.encode()), MAX_CONFIG_BYTES - RESOLVED_MARGIN_BYTES
    if size > limit:
        raise ConfigError(
            f"{source}: written out (aliases expanded, every level indented) the config is {size} bytes; "
            f"a config is at most {limit} bytes written out (so that config.yaml and checkpoints read back)"
        )
    nodes, stack = 0, [value]
    while stack:
        item = stack.pop()
        nodes += 1
        if isinstance(item, dict):
            nodes += len(item)  # the keys
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    if nodes > MAX_NODES:
        raise ConfigError(
            f"{source}: written out with every key this config holds {nodes} YAML nodes; a config holds at "
            f"most {MAX_NODES}"
        )


def _name(path) -> str:
    """``["model", "kwargs", "x", 0, 0]`` -> ``model.kwargs.x[0][0]`` (the first 8 steps, then ...)."""
    out = ""
    for i, step in enumerate(path):
        if i == 8:
            return out + "..."
        out += f"[{step}]" if isinstance(step, int) else f".{step}" if out else str(step)
    return out or "the top level"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting nesting and nodes as it composes and refusing duplicate keys."""

    def __init__(self, text: str, source: str, at: tuple[str, ...], nodes: int):
        super().__init__(text)
        self.source, self.at, self.budget = source, at, nodes
        self.path: list = list(at)  # the keys (or sequence indices) down to the node being composed
        self.composed = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):  # a node composed already: no deeper, no new node
            return super().compose_node(parent, index)
        if parent is not None:
            self.path.append(  # a sequence index, a mapping value's key, "?" for a key itself
                index if isinstance(index, int) else index.value if isinstance(index, ScalarNode) else "?"
            )
        try:
            line = self.peek_event().start_mark.line + 1
            if len(self.path) > MAX_DEPTH:
                raise ConfigError(
                    f"{self.source}: {_name(self.path)} (line {line}) is nested more than {MAX_DEPTH} "
                    f"levels deep; a config nests at most {MAX_DEPTH}"
                )
            self.composed += 1
            if self.composed > self.budget:
                raise ConfigError(
                    f"{self.source}: more than {MAX_NODES} YAML nodes (at {_name(self.path)}, line {line}); "
                    f"a config holds at most {MAX_NODES}"
                )
            return super().compose_node(parent, index)
        finally:
            if parent is not None:
                self.path.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first: dict = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == MERGE:
                continue
            line, ident = key.start_mark.line + 1, (key.tag, key.value)
            if ident in first:
                raise ConfigError(
                    f"{self.source}: {_name([*self.path, key.value])} is set twice, at line {first[ident]} "
                    f"and at line {line}; a key appears once per mapping"
                )
            first[ident] = line
        return node


def _check_expansion(root, loader: _BoundedLoader) -> int:
    """The node count of ``root`` as constructing and copying it builds it (an alias counts its
    anchor's nodes again); refuses a tree that exceeds ``loader.budget`` nodes or ``MAX_DEPTH``
    levels once aliases are expanded, or that contains itself."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded height)
    busy: set[int] = set()

    def deep(node, path) -> ConfigError:
        return ConfigError(
            f"{loader.source}: {_name(path)} (line {node.start_mark.line + 1}) is nested more than "
            f"{MAX_DEPTH} levels deep once its aliases are expanded; a config nests at most {MAX_DEPTH}"
        )

    def walk(node, level: int, path: list) -> tuple[int, int]:
        """(nodes, height) of ``node`` at nesting ``level``; recursion at most MAX_DEPTH deep."""
        if level > MAX_DEPTH:
            raise deep(node, path)
        known = sizes.get(id(node))
        if known is None:
            if id(node) in busy:
                raise ConfigError(
                    f"{loader.source}: {_name(path)} (line {node.start_mark.line + 1}) contains itself "
                    "through an alias: it would expand without end"
                )
            busy.add(id(node))
            total, height = 1, 0
            for step, child in _children(node):
                n, h = walk(child, level + 1, [*path, step])
                total, height = total + n, max(height, h + 1)
            busy.discard(id(node))
            known = sizes[id(node)] = (total, height)
        if level + known[1] > MAX_DEPTH:
            raise deep(node, path)
        return known

    total, _ = walk(root, len(loader.at), list(loader.at))
    if total > loader.budget:
        node, path = root, list(loader.at)
        while isinstance(node, MappingNode):  # name the innermost key whose value alone is too big
            big = [(k, v) for k, v in node.value if sizes[id(v)][0] > loader.budget]
            if not big:
                break
            key, node = big[0]
            path.append(key.value if isinstance(key, ScalarNode) else "?")
        raise ConfigError(
            f"{loader.source}: {_name(path)} (line {node.start_mark.line + 1}) expands to "
            f"{sizes[id(node)][0]} YAML nodes through its aliases; a config holds at most {MAX_NODES}"
        )
    return total


def _children(node):
    if isinstance(node, SequenceNode):
        return list(enumerate(node.value))
    if isinstance(node, MappingNode):
        out = []
        for key, value in node.value:
            name = key.value if isinstance(key, ScalarNode) else "?"
            out += [(name, key), (name, value)]
        return out
    return []
