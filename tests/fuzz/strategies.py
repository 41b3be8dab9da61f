"""Hypothesis strategies for webhook bodies: the providers' real payloads
(tests/fixtures/<provider>/) mutated while keeping their structure, and bodies
with no structure at all.

A mutation picks one to three places in a fixture and, at each, replaces the
value (nasty text, huge or non-finite numbers, wrong types, deep nesting),
deletes it, wraps it in a list or an object, or adds a key beside it. Bodies
are bytes, ready to be signed the way each provider signs.
"""

from __future__ import annotations

import copy
import json
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st


def weighted[T](*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of `choices` (weight, strategy), picked by weight. (`st.one_of` does
    not weigh its branches evenly: it favours those whose examples are simplest,
    so a branch of arbitrary bytes would crowd out the mutated fixtures.)"""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(table))).flatmap(lambda index: table[index])


# -- scalar values --------------------------------------------------------------------------

LONE_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
CONTROL = st.characters(categories=["Cc"])  # NUL, C0, DEL and C1

# Strings that mean something to some layer: the store's operators, paths and
# numbers written as text, phone and address look-alikes, markup, bidi marks.
TRICKY_TEXT = (
    "",
    " ",
    "\x00",
    "\r\n",
    "null",
    "None",
    "NaN",
    "Infinity",
    "-1",
    "0",
    "1e309",
    "99999999999999999999999",
    "$gt",
    "$where",
    "a.b",
    "{}",
    "[]",
    "<script>alert(1)</script>",
    "%00",
    "\u202e\u2066",
    "\ufeff",
    "💩",
    "+",
    "+1",
    "+15551230001",
    "+8656696",
    "whatsapp:",
    "whatsapp:+15551230001",
    "messenger:x",
    "tel:+15551230001",
    "a@b",
    "@",
    "<>",
    "=?utf-8?b?/w==?=",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59+14:00",
    # Names of codecs that are not text encodings, or take no error handler.
    "idna",
    "rot13",
    "utf-16",
    "utf-7",
    "unicode_escape",
)


def long_text() -> st.SearchStrategy[str]:
    """A very long string of one repeated character (cheap to draw, costly to handle)."""
    return st.builds(
        lambda n, c: c * n,
        st.integers(min_value=2_000, max_value=20_000),
        st.sampled_from(["a", "é", "😀", "\x00", " ", "9", "\u202e", "\n"]),
    )


def nasty_text(*, surrogates: bool = True) -> st.SearchStrategy[str]:
    """Text that is hard on a parser. `surrogates=False` for what must be UTF-8
    on the wire (a URL-encoded form): a lone surrogate cannot be encoded there."""
    options = [
        st.text(max_size=40),
        st.text(alphabet=CONTROL, min_size=1, max_size=8),
        st.sampled_from(TRICKY_TEXT),
        long_text(),
        st.builds(lambda a, b: a + b, st.sampled_from(TRICKY_TEXT), st.text(max_size=8)),
    ]
    if surrogates:
        options.append(
            st.builds(
                lambda a, s, b: a + s + b, st.text(max_size=4), LONE_SURROGATE, st.text(max_size=4)
            )
        )
    return st.one_of(options)


HUGE_INTS = st.one_of(
    st.integers(min_value=2**63 - 2, max_value=2**63 + 2),
    st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2),
    st.integers(min_value=2**31 - 1, max_value=2**31 + 1),
    st.sampled_from([2**64, 10**30, -(10**30), 10**300, 10**4000]),
    st.integers(),
)
ODD_FLOATS = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, -0.0, 1e308, -1e308, 5e-324, 2.0**63]),
    st.floats(),
)


@dataclass(frozen=True)
class Raw:
    """JSON text put into a document as is (deep nesting that `json.dumps` would
    refuse to write, numbers it cannot spell)."""

    text: str


RAW_JSON = st.one_of(
    st.integers(min_value=1, max_value=200).map(lambda n: Raw("[" * n + "]" * n)),
    st.integers(min_value=900, max_value=200_000).map(lambda n: Raw("[" * n + "]" * n)),
    st.integers(min_value=900, max_value=50_000).map(lambda n: Raw('{"a":' * n + "1" + "}" * n)),
    st.sampled_from([Raw("1e999"), Raw("-1e999"), Raw("1" * 5000), Raw("-0"), Raw("1E+2")]),
)

JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
SMALL_JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def nasty_value() -> st.SearchStrategy[Any]:
    """Any value a JSON field could be given instead of the right one: mostly
    text, then numbers and other types, now and then nesting or raw JSON."""
    other_types = st.one_of(st.booleans(), st.none(), st.just([]), st.just({}), SMALL_JSON)
    return weighted(
        (6, nasty_text()), (1, HUGE_INTS), (1, ODD_FLOATS), (3, other_types), (1, RAW_JSON)
    )


# -- JSON documents ---------------------------------------------------------------------------

Path = tuple[str | int, ...]


def _paths(node: Any, prefix: Path = ()) -> list[Path]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _get(node: Any, path: Path) -> Any:
    for step in path:
        node = node[step]
    return node


def _set(root: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    _get(root, path[:-1])[path[-1]] = value
    return root


def _delete(root: Any, path: Path) -> Any:
    if not path:
        return {}
    parent = _get(root, path[:-1])
    del parent[path[-1]]
    return root


MUTATIONS = ("replace", "replace", "replace", "delete", "wrap", "add", "stringify")


@st.composite
def mutated_document(draw: st.DrawFn, doc: Any, *, max_mutations: int = 3) -> Any:
    """`doc` (a parsed JSON fixture) with one to `max_mutations` places changed."""
    doc = copy.deepcopy(doc)
    # Mostly one change, so most bodies stay close enough to be read further.
    for _ in range(min(max_mutations, draw(st.sampled_from([1, 1, 1, 2, 3])))):
        # The document itself is kept an object (a body that is not one is the
        # arbitrary bodies' business): only what it holds is changed.
        paths = _paths(doc)[1:] or [()]
        path = draw(st.sampled_from(paths))
        mutation = draw(st.sampled_from(MUTATIONS))
        if mutation == "replace":
            doc = _set(doc, path, draw(nasty_value()))
        elif mutation == "delete":
            doc = _delete(doc, path)
        elif mutation == "wrap":
            old = _get(doc, path)
            doc = _set(doc, path, draw(st.sampled_from([[old], {"value": old}, [old, old]])))
        elif mutation == "stringify":
            old = _get(doc, path)
            doc = _set(doc, path, encode_json(old).decode("utf-8", "surrogatepass"))
        else:  # add a key beside the value (into the object it is in, or itself)
            target = _get(doc, path)
            if not isinstance(target, dict) and path:
                target = _get(doc, path[:-1])
            if isinstance(target, dict):
                key = draw(st.one_of(st.sampled_from(_keys_of(doc)), nasty_text()))
                target[key] = draw(nasty_value())
    return doc


def _keys_of(doc: Any) -> list[str]:
    keys = sorted({str(p[-1]) for p in _paths(doc) if p and isinstance(p[-1], str)})
    return keys or ["x"]


def encode_json(doc: Any, *, ascii_only: bool = True) -> bytes:
    """The JSON text of `doc`, with its `Raw` parts as they are; non-finite
    floats as Python writes them (NaN, Infinity), which Python also reads.

    `ascii_only=False` writes text as UTF-8, where a lone surrogate becomes
    bytes that are not UTF-8 at all."""
    raws: list[str] = []

    def placeholder(node: Any) -> Any:
        if isinstance(node, Raw):
            raws.append(node.text)
            return f"\x01RAW{len(raws) - 1}\x01"
        if isinstance(node, dict):
            return {str(k): placeholder(v) for k, v in node.items()}
        if isinstance(node, list):
            return [placeholder(v) for v in node]
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) > 10**4000:
            raws.append(str(node))
            return f"\x01RAW{len(raws) - 1}\x01"
        return node

    text = json.dumps(placeholder(doc), ensure_ascii=ascii_only)
    for index, raw in enumerate(raws):
        token = json.dumps(f"\x01RAW{index}\x01", ensure_ascii=ascii_only)
        text = text.replace(token, raw)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated_json(draw: st.DrawFn, fixtures: Mapping[str, Any]) -> bytes:
    """One of `fixtures` (name: parsed JSON) mutated, as a request body."""
    name = draw(st.sampled_from(sorted(fixtures)))
    doc = draw(mutated_document(fixtures[name]))
    return encode_json(doc, ascii_only=draw(st.booleans()))


def json_bodies(fixtures: Mapping[str, Any]) -> st.SearchStrategy[bytes]:
    """Three in four a mutated fixture, one in four an arbitrary body."""
    return weighted((3, mutated_json(fixtures)), (1, arbitrary_body()))


def arbitrary_body() -> st.SearchStrategy[bytes]:
    """A body that is anything at all: bytes, text, JSON of any shape, deep nesting."""
    return st.one_of(
        st.binary(max_size=512),
        nasty_text().map(lambda t: t.encode("utf-8", "surrogatepass")),
        SMALL_JSON.map(lambda v: encode_json(v)),
        st.dictionaries(nasty_text(), nasty_value(), max_size=6).map(encode_json),
        RAW_JSON.map(lambda r: r.text.encode()),
        st.sampled_from([b"", b"{}", b"[]", b"null", b"0", b'""', b"{", b"\xff\xfe{}", b"\x00"]),
    )


# -- URL-encoded forms -----------------------------------------------------------------------

Pairs = list[tuple[str, str]]
FORM_MUTATIONS = ("replace", "replace", "delete", "duplicate", "add", "rename")


@st.composite
def mutated_pairs(draw: st.DrawFn, pairs: Sequence[tuple[str, str]]) -> Pairs:
    """A form's (name, value) pairs with one to three changes (no lone surrogates:
    a form is UTF-8 on the wire)."""
    out = list(pairs)
    text = nasty_text(surrogates=False)
    names = sorted({name for name, _ in pairs}) or ["x"]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        mutation = draw(st.sampled_from(FORM_MUTATIONS))
        if not out:
            mutation = "add"
        index = draw(st.integers(min_value=0, max_value=max(0, len(out) - 1)))
        if mutation == "replace":
            out[index] = (out[index][0], draw(text))
        elif mutation == "delete":
            del out[index]
        elif mutation == "duplicate":
            out.insert(index, (out[index][0], draw(text)))
        elif mutation == "rename":
            out[index] = (draw(text), out[index][1])
        else:
            out.append((draw(st.one_of(st.sampled_from(names), text)), draw(text)))
    return out


def encode_pairs(pairs: Pairs) -> bytes:
    return urllib.parse.urlencode(pairs).encode()


# -- multipart forms -------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    name: str
    data: bytes
    filename: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def parse_multipart(body: bytes, boundary: str) -> list[Part]:
    """The parts of a fixture's multipart body (simple layout: CRLF, no preamble)."""
    parts = []
    delimiter = b"--" + boundary.encode()
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        name, filename, headers = "", None, []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "content-disposition":
                params = dict(
                    (k.strip(), v.strip().strip('"'))
                    for k, _, v in (p.partition("=") for p in value.split(";")[1:])
                )
                name, filename = params.get("name", ""), params.get("filename")
            else:
                headers.append((key.strip(), value.strip()))
        parts.append(Part(name, data, filename, tuple(headers)))
    return parts


def encode_multipart(parts: Sequence[Part], boundary: str) -> bytes:
    out = []
    for part in parts:
        disposition = f'form-data; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        lines = [f"Content-Disposition: {disposition}"]
        lines += [f"{k}: {v}" for k, v in part.headers]
        head = "\r\n".join(lines).encode("utf-8", "surrogatepass")
        out.append(b"--" + boundary.encode() + b"\r\n" + head + b"\r\n\r\n" + part.data + b"\r\n")
    out.append(b"--" + boundary.encode() + b"--\r\n")
    return b"".join(out)


# Part headers a sender may add: transfer and content encodings a reader must
# decode (or refuse), and charsets that exist or do not.
PART_HEADERS = (
    ("Content-Transfer-Encoding", "base64"),
    ("Content-Transfer-Encoding", "quoted-printable"),
    ("Content-Transfer-Encoding", "x-bogus"),
    ("Content-Encoding", "gzip"),
    ("Content-Encoding", "deflate"),
    ("Content-Encoding", "br"),
    ("Content-Encoding", "x-bogus"),
    ("Content-Type", "text/plain; charset=x-no-such-charset"),
    ("Content-Type", "text/plain; charset=utf-7"),
    ("Content-Type", "text/plain; charset=utf-16"),
    ("Content-Type", "text/plain; charset=idna"),
    ("Content-Type", "text/plain; charset=rot13"),
    ("Content-Type", "multipart/mixed; boundary=inner"),
    ("Content-Type", ""),
)
PART_MUTATIONS = ("data", "data", "json", "delete", "add", "header", "filename", "name")


def text_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        nasty_text().map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=256),
    )


@st.composite
def mutated_parts(
    draw: st.DrawFn, parts: Sequence[Part], *, json_fields: Sequence[str] = ()
) -> list[Part]:
    """A multipart form's parts with one to three changes: a part's data (as
    text, as bytes, or, for `json_fields`, its JSON mutated), a part deleted
    or added, an encoding header added, the file name or the field name changed."""
    out = list(parts)
    names = sorted({p.name for p in parts}) or ["x"]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        mutation = draw(st.sampled_from(PART_MUTATIONS))
        if not out:
            mutation = "add"
        index = draw(st.integers(min_value=0, max_value=max(0, len(out) - 1)))
        if mutation == "data":
            out[index] = replace(out[index], data=draw(text_bytes()))
        elif mutation == "json":
            part = out[index]
            fields = [p for p in out if p.name in json_fields]
            if fields:
                part = draw(st.sampled_from(fields))
                index = out.index(part)
            try:
                doc = json.loads(part.data)
            except ValueError:
                doc = {}
            body = encode_json(draw(mutated_document(doc)), ascii_only=draw(st.booleans()))
            out[index] = replace(part, data=body)
        elif mutation == "delete":
            del out[index]
        elif mutation == "header":
            header = draw(st.sampled_from(PART_HEADERS))
            out[index] = replace(out[index], headers=(*out[index].headers, header))
        elif mutation == "filename":
            out[index] = replace(out[index], filename=draw(nasty_text(surrogates=False)))
        elif mutation == "name":
            out[index] = replace(out[index], name=draw(nasty_text(surrogates=False)))
        else:
            name = draw(st.one_of(st.sampled_from(names), nasty_text(surrogates=False)))
            filename = draw(st.one_of(st.none(), nasty_text(surrogates=False)))
            out.append(Part(name, draw(text_bytes()), filename))
    return out


@st.composite
def mutated_text_lines(draw: st.DrawFn, text: str) -> str:
    """A text document (a raw e-mail) with one to three lines replaced, deleted,
    or cut off where it stands."""
    lines = text.split("\n")
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        index = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        mutation = draw(st.sampled_from(("replace", "value", "delete", "truncate")))
        if mutation == "replace":
            lines[index] = draw(nasty_text())
        elif mutation == "value":  # keep a header's name, change its value
            name, colon, _ = lines[index].partition(":")
            lines[index] = name + colon + " " + draw(nasty_text())
        elif mutation == "delete" and len(lines) > 1:
            del lines[index]
        else:
            lines = lines[: index + 1]
    return "\n".join(lines)
