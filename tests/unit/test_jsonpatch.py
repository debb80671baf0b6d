"""haku.render.jsonpatch: the examples of RFC 6902's appendix A and RFC 6901's section 5,
plus what the RFCs require around them (all or nothing, JSON equality, pointer syntax)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from haku.render import jsonpatch
from haku.render.jsonpatch import PatchError, apply, parse_pointer, pointer, resolve

# RFC 6902 appendix A: (section, document, patch, result). Documents and patches as JSON
# text, as the RFC writes them.
APPENDIX_A = [
    ("A.1 adding an object member",
     '{"foo": "bar"}',
     '[{"op": "add", "path": "/baz", "value": "qux"}]',
     '{"baz": "qux", "foo": "bar"}'),
    ("A.2 adding an array element",
     '{"foo": ["bar", "baz"]}',
     '[{"op": "add", "path": "/foo/1", "value": "qux"}]',
     '{"foo": ["bar", "qux", "baz"]}'),
    ("A.3 removing an object member",
     '{"baz": "qux", "foo": "bar"}',
     '[{"op": "remove", "path": "/baz"}]',
     '{"foo": "bar"}'),
    ("A.4 removing an array element",
     '{"foo": ["bar", "qux", "baz"]}',
     '[{"op": "remove", "path": "/foo/1"}]',
     '{"foo": ["bar", "baz"]}'),
    ("A.5 replacing a value",
     '{"baz": "qux", "foo": "bar"}',
     '[{"op": "replace", "path": "/baz", "value": "boo"}]',
     '{"baz": "boo", "foo": "bar"}'),
    ("A.6 moving a value",
     '{"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}',
     '[{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]',
     '{"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}'),
    ("A.7 moving an array element",
     '{"foo": ["all", "grass", "cows", "eat"]}',
     '[{"op": "move", "from": "/foo/1", "path": "/foo/3"}]',
     '{"foo": ["all", "cows", "eat", "grass"]}'),
    ("A.8 testing a value: success",
     '{"baz": "qux", "foo": ["a", 2, "c"]}',
     '[{"op": "test", "path": "/baz", "value": "qux"},'
     ' {"op": "test", "path": "/foo/1", "value": 2}]',
     '{"baz": "qux", "foo": ["a", 2, "c"]}'),
    ("A.10 adding a nested member object",
     '{"foo": "bar"}',
     '[{"op": "add", "path": "/child", "value": {"grandchild": {}}}]',
     '{"foo": "bar", "child": {"grandchild": {}}}'),
    ("A.11 ignoring unrecognized elements",
     '{"foo": "bar"}',
     '[{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}]',
     '{"foo": "bar", "baz": "qux"}'),
    ("A.14 ~ escape ordering",
     '{"/": 9, "~1": 10}',
     '[{"op": "test", "path": "/~01", "value": 10}]',
     '{"/": 9, "~1": 10}'),
    ("A.16 adding an array value",
     '{"foo": ["bar"]}',
     '[{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}]',
     '{"foo": ["bar", ["abc", "def"]]}'),
]

# RFC 6902 appendix A, the examples that are errors: (section, document, patch, reason).
APPENDIX_A_ERRORS = [
    ("A.9 testing a value: error",
     '{"baz": "qux"}',
     '[{"op": "test", "path": "/baz", "value": "bar"}]',
     'test failed: /baz is "qux", not "bar"'),
    ("A.12 adding to a nonexistent target",
     '{"foo": "bar"}',
     '[{"op": "add", "path": "/baz/bat", "value": "qux"}]',
     "/baz does not exist"),
    ("A.15 comparing strings and numbers",
     '{"/": 9, "~1": 10}',
     '[{"op": "test", "path": "/~01", "value": "10"}]',
     'test failed: /~01 is 10, not "10"'),
]
# A.13 (an operation with two "op" members) is invalid JSON for a JSON object parser that
# keeps the last member; it cannot reach apply() as a Python value.


@pytest.mark.parametrize(("section", "doc", "patch", "result"), APPENDIX_A,
                         ids=[a[0] for a in APPENDIX_A])
def test_rfc6902_appendix_a(section: str, doc: str, patch: str, result: str) -> None:
    original = json.loads(doc)
    kept = copy.deepcopy(original)
    assert apply(original, json.loads(patch)) == json.loads(result)
    assert original == kept  # the input is never changed


@pytest.mark.parametrize(("section", "doc", "patch", "reason"), APPENDIX_A_ERRORS,
                         ids=[a[0] for a in APPENDIX_A_ERRORS])
def test_rfc6902_appendix_a_errors(section: str, doc: str, patch: str, reason: str) -> None:
    with pytest.raises(PatchError) as info:
        apply(json.loads(doc), json.loads(patch))
    assert info.value.index == 0
    assert info.value.reason == reason


# RFC 6901 section 5.
RFC6901_DOC = json.loads(r'''{
  "foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4, "i\\j": 5,
  "k\"l": 6, " ": 7, "m~n": 8}''')


@pytest.mark.parametrize(("ptr", "value"), [
    ("", RFC6901_DOC), ("/foo", ["bar", "baz"]), ("/foo/0", "bar"), ("/", 0), ("/a~1b", 1),
    ("/c%d", 2), ("/e^f", 3), ("/g|h", 4), ("/i\\j", 5), ('/k"l', 6), ("/ ", 7),
    ("/m~0n", 8),
])
def test_rfc6901_pointers(ptr: str, value: Any) -> None:
    assert resolve(RFC6901_DOC, parse_pointer(ptr)) == value


def test_pointers_are_escaped_and_unescaped() -> None:
    assert parse_pointer("/a~1b/~0c/~01") == ["a/b", "~c", "~1"]
    assert pointer("a/b", "~c", 0) == "/a~1b/~0c/0"
    assert parse_pointer(pointer("x~/y", "-")) == ["x~/y", "-"]
    for bad in ("a", "/a~2", "/a~", "#/a"):
        with pytest.raises(jsonpatch.PointerError):
            parse_pointer(bad)


def test_the_patch_is_all_or_nothing_and_names_the_failing_operation() -> None:
    doc = {"a": 1, "list": [1, 2]}
    patch = [{"op": "add", "path": "/b", "value": 2},
             {"op": "remove", "path": "/list/0"},
             {"op": "remove", "path": "/missing"}]
    with pytest.raises(PatchError) as info:
        apply(doc, patch)
    assert (info.value.index, info.value.reason) == (2, "/missing does not exist")
    assert str(info.value) == "operation 2: /missing does not exist"
    assert doc == {"a": 1, "list": [1, 2]}  # nothing of the first two stuck


def test_values_are_copied_in_and_out() -> None:
    value = {"x": [1]}
    patch = [{"op": "add", "path": "/v", "value": value}]
    out = apply({}, patch)
    out["v"]["x"].append(2)
    assert value == {"x": [1]} and patch[0]["value"] == {"x": [1]}
    copied = apply({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}])
    copied["c"]["b"] = 2
    assert copied == {"a": {"b": 1}, "c": {"b": 2}}


def test_json_equality_for_test() -> None:
    doc = {"n": 1, "f": 1.0, "t": True, "o": {"a": 1, "b": [1, {"c": None}]}, "z": None}
    ok = [("/n", 1.0), ("/f", 1), ("/t", True), ("/o", {"b": [1, {"c": None}], "a": 1}),
          ("/z", None)]
    for path, value in ok:
        assert apply(doc, [{"op": "test", "path": path, "value": value}]) == doc
    bad = [("/n", True), ("/t", 1), ("/o", {"a": 1}), ("/o/b", [{"c": None}, 1]),
           ("/z", False), ("/z", 0), ("/n", "1"), ("/o", [])]
    for path, value in bad:
        with pytest.raises(PatchError, match="test failed"):
            apply(doc, [{"op": "test", "path": path, "value": value}])


@pytest.mark.parametrize(("doc", "op", "reason"), [
    ({"a": [1]}, {"op": "add", "path": "/a/2", "value": 0},
     "/a/2: index 2 is out of range (the array has 1 element)"),
    ({"a": [1]}, {"op": "remove", "path": "/a/1"},
     "/a/1: index 1 is out of range (the array has 1 element)"),
    ({"a": [1, 2]}, {"op": "replace", "path": "/a/01", "value": 0},
     "/a/01: '01' is not an array index"),
    ({"a": [1]}, {"op": "remove", "path": "/a/-"}, "/a/-: '-' is not an array index"),
    ({"a": "s"}, {"op": "add", "path": "/a/b", "value": 0},
     "/a is a string: /a/b cannot be in it"),
    ({"a": "s"}, {"op": "test", "path": "/a/b", "value": 0},
     "/a/b does not exist (/a is a string, not an object or array)"),
    ({"a": {}}, {"op": "replace", "path": "/b", "value": 0}, "/b does not exist"),
    ({"a": {"b": {}}}, {"op": "move", "from": "/a", "path": "/a/b/c"},
     "/a cannot be moved into its own child /a/b/c"),
    ({"a": 1}, {"op": "copy", "from": "/x", "path": "/y"}, "/x does not exist"),
    ({"a": 1}, {"op": "remove", "path": ""}, "the document root cannot be removed"),
    ({}, {"op": "add", "path": "a", "value": 1},
     "'a' is not a JSON pointer (it is '' or starts with '/')"),
    ({}, {"op": "add", "path": "/a"}, "add needs a value"),
    ({}, {"op": "move", "path": "/a"}, "move needs from (a JSON pointer string)"),
    ({}, {"op": "merge", "path": "/a"},
     "op 'merge' is not one of add, remove, replace, move, copy, test"),
    ({}, {"path": "/a"}, "op None is not one of add, remove, replace, move, copy, test"),
    ({}, {"op": "remove"}, "remove needs a path (a JSON pointer string)"),
    ({}, "add /a", "an operation is an object, not a string"),
])
def test_failures_say_why(doc: Any, op: Any, reason: str) -> None:
    with pytest.raises(PatchError) as info:
        apply(doc, [op])
    assert info.value.reason == reason


def test_whole_document_operations_and_positions() -> None:
    assert apply({"a": 1}, [{"op": "replace", "path": "", "value": [1]}]) == [1]
    assert apply({"a": 1}, [{"op": "add", "path": "", "value": {"b": 2}}]) == {"b": 2}
    # replace keeps a member where it was; add of a new one appends it
    out = apply({"a": 1, "b": 2, "c": 3}, [{"op": "replace", "path": "/b", "value": 0},
                                           {"op": "add", "path": "/a", "value": 9},
                                           {"op": "add", "path": "/d", "value": 4}])
    assert list(out.items()) == [("a", 9), ("b", 0), ("c", 3), ("d", 4)]
    # moving onto itself changes nothing; add at the end index appends
    assert apply({"a": [1]}, [{"op": "move", "from": "/a", "path": "/a"},
                              {"op": "add", "path": "/a/1", "value": 2}]) == {"a": [1, 2]}
    assert apply({"a": None}, [{"op": "test", "path": "/a", "value": None}]) == {"a": None}
