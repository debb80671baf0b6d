"""JSON Patch (RFC 6902) and JSON Pointer (RFC 6901) on plain JSON values (pure).

:func:`apply` runs a list of operations (``{"op": "add", "path": "/a/0", "value": …}``) on
a document and returns the result; the document given is never changed, and a patch that
fails at any operation changes nothing at all (RFC 6902 section 5: the whole patch or
nothing). A failure is :class:`PatchError`, carrying the operation's index and the reason.

Values are what ``json.loads`` (or a YAML safe load) yields: dict, list, str, int, float,
bool, None. ``test`` compares as JSON does (section 4.6): numbers by value (``1`` equals
``1.0``), never a boolean with a number, objects by their members whatever their order,
arrays element by element.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

OPS = ("add", "remove", "replace", "move", "copy", "test")
# Operations that need "value", and those that need "from".
VALUE_OPS = ("add", "replace", "test")
FROM_OPS = ("move", "copy")


class PatchError(ValueError):
    """Operation ``index`` of a patch could not be applied; ``reason`` says why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)
        self.index = index
        self.reason = reason

    def __str__(self) -> str:
        return f"operation {self.index}: {self.reason}"


class PointerError(ValueError):
    """A string that is not a JSON Pointer, or one that names nothing in the document."""


def parse_pointer(pointer: str) -> list[str]:
    """The reference tokens of ``pointer``: ``""`` is the whole document (no token),
    ``"/a~1b/~0c"`` is ``["a/b", "~c"]``."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PointerError(f"{pointer!r} is not a JSON pointer (it is '' or starts with '/')")
    tokens = []
    for raw in pointer[1:].split("/"):
        rest = raw.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise PointerError(f"{pointer!r} is not a JSON pointer: '~' must be followed by "
                               "0 or 1")
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tokens


def escape(token: str) -> str:
    """One reference token, escaped for a pointer (``~`` → ``~0``, ``/`` → ``~1``)."""
    return token.replace("~", "~0").replace("/", "~1")


def pointer(*tokens: str | int) -> str:
    """The pointer to ``tokens``: ``pointer("a/b", 0)`` is ``"/a~1b/0"``."""
    return "".join("/" + escape(str(t)) for t in tokens)


def _index(part: str, size: int, *, insert: bool) -> int:
    """The array index a reference token names (``insert``: ``-`` or up to ``size``, for
    add)."""
    if insert and part == "-":
        return size
    if not part.isascii() or not part.isdigit() or (len(part) > 1 and part[0] == "0"):
        raise PointerError(f"{part!r} is not an array index")
    index = int(part)
    if index > size or (index == size and not insert):
        raise PointerError(f"index {index} is out of range (the array has {size} "
                           f"element{'s' if size != 1 else ''})")
    return index


def _describe(tokens: Sequence[str]) -> str:
    return pointer(*tokens) or "the document root"


def resolve(doc: Any, tokens: Sequence[str]) -> Any:
    """The value ``tokens`` name in ``doc``; :class:`PointerError` if there is none."""
    node = doc
    for depth, token in enumerate(tokens):
        where = _describe(tokens[:depth + 1])
        if isinstance(node, dict):
            if token not in node:
                raise PointerError(f"{where} does not exist")
            node = node[token]
        elif isinstance(node, list):
            try:
                node = node[_index(token, len(node), insert=False)]
            except PointerError as e:
                raise PointerError(f"{where}: {e}") from None
        else:
            raise PointerError(f"{where} does not exist ({_describe(tokens[:depth])} is "
                               f"{_kind(node)}, not an object or array)")
    return node


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "an object" if isinstance(value, dict) else "an array"


def _parent(doc: Any, tokens: Sequence[str]) -> Any:
    parent = resolve(doc, tokens[:-1])
    if not isinstance(parent, dict | list):
        raise PointerError(f"{_describe(tokens[:-1])} is {_kind(parent)}: {_describe(tokens)} "
                           "cannot be in it")
    return parent


def _add(doc: Any, tokens: Sequence[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    else:
        try:
            parent.insert(_index(tokens[-1], len(parent), insert=True), value)
        except PointerError as e:
            raise PointerError(f"{_describe(tokens)}: {e}") from None
    return doc


def _remove(doc: Any, tokens: Sequence[str]) -> tuple[Any, Any]:
    """(the document without the value, the value removed)."""
    if not tokens:
        raise PointerError("the document root cannot be removed")
    resolve(doc, tokens)  # it must exist
    parent = _parent(doc, tokens)
    if isinstance(parent, dict):
        return doc, parent.pop(tokens[-1])
    return doc, parent.pop(_index(tokens[-1], len(parent), insert=False))


def _replace(doc: Any, tokens: Sequence[str], value: Any) -> Any:
    """In place, so an object's member keeps its position."""
    resolve(doc, tokens)  # it must exist
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    else:
        parent[_index(tokens[-1], len(parent), insert=False)] = value
    return doc


def equal(a: Any, b: Any) -> bool:
    """JSON equality (RFC 6902 section 4.6)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


def check_operation(operation: Any) -> str | None:
    """What is wrong with the shape of one operation (None if nothing)."""
    if not isinstance(operation, Mapping):
        return f"an operation is an object, not {_kind(operation)}"
    op = operation.get("op")
    if op not in OPS:
        return f"op {op!r} is not one of {', '.join(OPS)}"
    if not isinstance(operation.get("path"), str):
        return f"{op} needs a path (a JSON pointer string)"
    if op in FROM_OPS and not isinstance(operation.get("from"), str):
        return f"{op} needs from (a JSON pointer string)"
    if op in VALUE_OPS and "value" not in operation:
        return f"{op} needs a value"
    return None


def _apply_one(doc: Any, operation: Mapping[str, Any]) -> Any:
    op = operation["op"]
    tokens = parse_pointer(operation["path"])
    if op == "add":
        return _add(doc, tokens, copy.deepcopy(operation["value"]))
    if op == "remove":
        return _remove(doc, tokens)[0]
    if op == "replace":
        return _replace(doc, tokens, copy.deepcopy(operation["value"]))
    if op == "test":
        found = resolve(doc, tokens)
        if not equal(found, operation["value"]):
            raise PointerError(f"test failed: {_describe(tokens)} is {_show(found)}, not "
                               f"{_show(operation['value'])}")
        return doc
    source = parse_pointer(operation["from"])
    if op == "copy":
        return _add(doc, tokens, copy.deepcopy(resolve(doc, source)))
    # move
    if tokens[:len(source)] == source and len(tokens) > len(source):
        raise PointerError(f"{_describe(source)} cannot be moved into its own child "
                           f"{_describe(tokens)}")
    if tokens == source:
        resolve(doc, source)  # it must exist; moving it onto itself changes nothing
        return doc
    doc, value = _remove(doc, source)
    return _add(doc, tokens, value)


def _show(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def apply(doc: Any, operations: Sequence[Any]) -> Any:
    """``doc`` with ``operations`` applied in order: a new value, ``doc`` is left as it is.
    :class:`PatchError` (naming the failing operation's index) if any operation is malformed
    or fails; then nothing is applied."""
    result = copy.deepcopy(doc)
    for index, operation in enumerate(operations):
        problem = check_operation(operation)
        if problem:
            raise PatchError(index, problem)
        try:
            result = _apply_one(result, operation)
        except PointerError as e:
            raise PatchError(index, str(e)) from None
    return result
