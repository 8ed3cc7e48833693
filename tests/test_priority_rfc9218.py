"""RFC 9218 `priority` as an RFC 8941 Dictionary: explicit cases, the Python parser against a reference written from
the RFC 8941 ABNF, and the C parser in the real .wasm (through the Python proxy-wasm host) against the Python one."""

from __future__ import annotations

import base64
import functools
import json
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dapb_mesh.mesh.wasm_host import ProxyWasmHost
from dapb_mesh.policy.structured_fields import Token, parse_dictionary
from dapb_mesh.policy.urgency import Priority, parse_priority, priority_urgency

WASM = Path(__file__).resolve().parents[1] / "wasm_filter" / "dapb_filter.wasm"

# ---- the filter's urgency, read exactly through its classes ---------------------------------------------------
LEVELS = [(7 - u) * 1000 // 7 for u in range(8)]  # thousandths for u = 0..7, rounded down as both sides do
ABSENT = 500  # the probes' default_urgency: no level equals it, so "no valid u" shows


@functools.cache
def _probe(level: int) -> ProxyWasmHost:
    """A filter whose two thresholds are `level`: latency above it, throughput below, no class at exactly it."""
    cfg = {"u_threshold": level / 1000, "throughput_below": level / 1000, "default_urgency": ABSENT / 1000}
    host = ProxyWasmHost(WASM, json.dumps(cfg).encode())
    assert host.configure(), host.logs
    return host


def _compare(level: int, header: str) -> int:
    """Sign of (the filter's urgency for `header` - level), in thousandths."""
    host = _probe(level)
    ctx, stream = host.new_stream({})  # no route: a header without a valid u gets default_urgency
    host.request_headers(ctx, {"priority": header}, end_of_stream=True)
    cls = stream.request_headers.get("x-dapb-class")
    host.finish(ctx)
    return {"latency": 1, None: 0, "throughput": -1}[cls]


def filter_urgency_milli(header: str) -> int | None:
    """The urgency the .wasm reads from `header` (None: no valid u), by binary search over the possible values."""
    candidates = sorted([*LEVELS, ABSENT])
    lo, hi = 0, len(candidates) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        sign = _compare(candidates[mid], header)
        if sign == 0:
            return None if candidates[mid] == ABSENT else candidates[mid]
        lo, hi = (mid + 1, hi) if sign > 0 else (lo, mid - 1)
    raise AssertionError(f"the filter read {header!r} as an urgency that no u gives")


def python_urgency_milli(header: str) -> int | None:
    u = parse_priority(header).urgency
    milli = None if u is None else LEVELS[u]
    assert priority_urgency(header) == (None if u is None else milli / 1000)
    return milli


# ---- explicit cases ----------------------------------------------------------------------------------------------
URGENCY_CASES = [
    ("u=0, u=7", 7),  # the last occurrence of a key wins
    ("u=7, u=0", 0),
    ("u=1, u=9", None),  # ... even when its value is then ignored
    ("u=9, u=2", 2),
    ("u=1, u", None),  # a bare u is the boolean true
    ("u=1;a=2", 1),  # parameters on a member
    ('u=1;a;b=?0;c=1.5;d="x";e=:YQ==:;f=tok', 1),
    ("u=1;u=5", 1),  # a parameter named u is not the member u
    ("u=00", 0),  # sf-integer allows leading zeros
    ("u=007", 7),
    ("u=000000000000003", 3),  # 15 digits: the most an sf-integer has
    ("u=0000000000000003", None),  # 16: the whole field fails
    ("u=-0", 0),  # -0 is the integer 0
    ("u=-1", None),
    ("u=8", None),
    ("u=1.0", None),  # a decimal, not an integer
    ("u=a", None),
    ('u="1"', None),
    ("u=?1", None),
    ("u=(1)", None),  # an inner list
    ("u=:YQ==:", None),
    ("u=+1", None),
    ("u=1,", None),  # trailing comma: the whole field fails
    ("u=1, ", None),
    ("u=1,,i", None),
    ("u=1, U=2", None),  # keys are lowercase
    ("u=1, 1a=2", None),
    ("u=1, =2", None),
    ("u=1 i", None),
    ("u=1, i=?2", None),
    ("u=1, a=b c", None),
    ('u=1, a="unterminated', None),
    ("u=1, a=:Y:", None),  # base64 that cannot decode
    ("u=1, a=:=YQ:", None),
    ("u=1, a=1.", None),
    ("u=1, a=1.2345", None),
    ("u=1, a=(1 2", None),
    ("u=1, a=(1,2)", None),
    ("u=2, a=:YQ:", 2),  # unpadded base64 is accepted
    ('u=2, a=(1 "x" tok);p=1, b=( )', 2),
    ('a="x, u=0", u=4', 4),  # commas inside strings separate nothing
    ("i, u=1", 1),
    ("u=3, i", 3),
    ("  u=3  ", 3),  # leading SP and trailing OWS are allowed ...
    ("u=3\t", 3),
    ("u=3 \t,\t i", 3),
    ("\tu=3", None),  # ... but a leading tab is not (HTTP strips it before the field is parsed)
    ("u=3; \ta", None),  # parameters allow SP only
    ("", None),
    ("i", None),
    ("xu=1", None),
]


@pytest.mark.parametrize(("header", "u"), URGENCY_CASES)
def test_urgency_follows_rfc9218_and_rfc8941(header, u):
    assert parse_priority(header).urgency == u
    assert priority_urgency(header) == (None if u is None else (7 - u) * 1000 // 7 / 1000)


@pytest.mark.parametrize(("header", "u"), URGENCY_CASES)
def test_the_filter_reads_the_explicit_cases_as_python_does(header, u):
    assert filter_urgency_milli(header) == (None if u is None else LEVELS[u])


@pytest.mark.parametrize(
    ("header", "incremental"),
    [
        ("i", True),
        ("i=?1", True),
        ("i=?0", False),
        ("u=1, i, i=?0", False),
        ("i=?0, i", True),
        ("i;x=1", True),
        ("i=1", False),  # not a boolean: ignored, RFC 9218's default (false)
        ("i=?2", False),  # not a Dictionary
        ("i,", False),
        ("", False),
    ],
)
def test_incremental_is_a_boolean(header, incremental):
    assert parse_priority(header).incremental is incremental


def test_the_dictionary_keeps_types_parameters_and_the_last_value():
    assert parse_dictionary('u=0, u=7;a=2, i, t=tok, s="a\\"b", d=-1.5, b=:YQ:, l=(1 ?0);p') == {
        "u": (7, {"a": 2}),
        "i": (True, {}),
        "t": (Token("tok"), {}),
        "s": ('a"b', {}),
        "d": (-1.5, {}),
        "b": (b"a", {}),
        "l": ([(1, {}), (False, {})], {"p": True}),
    }
    assert isinstance(parse_dictionary("t=tok")["t"][0], Token)
    assert parse_dictionary("a=1,") is None and parse_dictionary("") == {}
    assert parse_priority("u=1,") == Priority(None, False)


# ---- a reference from the RFC 8941 ABNF (sections 3.2, 3.1.1, 3.1.2, 3.3), for keys u and i ---------------------
_KEY = r"[a-z*][a-z0-9_.*-]*"
_INTEGER = r"-?[0-9]{1,15}"
_DECIMAL = r"-?[0-9]{1,12}\.[0-9]{1,3}"
_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
_TOKEN = r"[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*"
# The ABNF lets any base64 characters through; 4.2.7 fails what does not decode: "=" only pads a last quantum (2 or 3
# characters), and a 1-character tail decodes to nothing. Padding may be missing (4.2.7 asks parsers to accept it).
_B64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2,3})?"
_BINARY = f":{_B64}:"
_BOOLEAN = r"\?[01]"
_BARE = f"(?:{_INTEGER}|{_DECIMAL}|{_STRING}|{_TOKEN}|{_BINARY}|{_BOOLEAN})"
_PARAMS = f"(?:; *{_KEY}(?:={_BARE})?)*"
_ITEM = f"{_BARE}{_PARAMS}"
_INNER = rf"\( *(?:{_ITEM}(?: +{_ITEM})* *)?\){_PARAMS}"
_ANY_MEMBER = f"{_KEY}(?:={_ITEM}|={_INNER}|{_PARAMS})"
# 4.2 also takes leading SP before, and 4.2.2 trailing OWS after, the ABNF's dictionary; empty is an empty dictionary
_FIELD = re.compile(rf" *(?:{_ANY_MEMBER}(?:[ \t]*,[ \t]*{_ANY_MEMBER})*[ \t]*)?")
# One member, with what u and i need; it must end where a separator or the end is (strings may hold commas).
_MEMBER = re.compile(
    rf"(?P<key>{_KEY})(?:=(?P<bare>{_BARE}){_PARAMS}|=(?P<inner>{_INNER})|{_PARAMS})(?=[ \t]*(?:,|\Z))"
)
_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


def reference_priority(header: str) -> Priority:
    if not _FIELD.fullmatch(header):
        return Priority(None, False)
    u: int | None = None
    incremental = False
    pos = len(header) - len(header.lstrip(" "))
    while pos < len(header.rstrip(" \t")):
        m = _MEMBER.match(header, pos)
        assert m, (header, pos)
        bare = m["bare"]
        value: object = True if bare is None and m["inner"] is None else bare
        if m["key"] == "u":
            u = int(value) if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value) else None
            u = u if u is not None and 0 <= u <= 7 else None
        elif m["key"] == "i":
            incremental = value is True or value == "?1"
        sep = _SEPARATOR.match(header, m.end())
        pos = sep.end() if sep else len(header)
    return Priority(u, incremental)


# ---- generated headers: dictionaries with repeated keys, parameters, leading zeros, whitespace, and breakage -----
def _mostly(valid: st.SearchStrategy[str], broken: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly valid pieces, now and then a broken one: most dictionaries parse, and many that do not fail late."""
    return st.integers(0, 29).flatmap(lambda roll: broken if roll == 0 else valid)


_DIGITS = "0123456789"
_keys = _mostly(
    st.sampled_from(["u", "u", "u", "u", "i", "i", "a", "*", "x-y.z_1*", "u1", "iu"]),
    st.sampled_from(["U", "1a", "", "é"]),
)
_small = st.builds(  # u's candidates: 0..9 with signs and leading zeros up to the 15-digit limit and past it
    "{}{}{}".format,
    st.sampled_from(["", "", "", "-"]),
    st.sampled_from(["", "", "0", "00", "0" * 13, "0" * 14, "0" * 15]),
    st.integers(0, 9),
)
_integers = st.builds("{}{}".format, st.sampled_from(["", "-"]), st.integers(0, 10**15 - 1))
_decimals = st.builds(
    "{}.{}".format, st.text(_DIGITS, min_size=1, max_size=12), st.text(_DIGITS, min_size=1, max_size=3)
)
_strings = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6).map(
    lambda body: '"' + body.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
_tokens = st.from_regex(r"[A-Za-z*][a-z0-9:/!.*#-]{0,4}", fullmatch=True)
_binaries = st.builds(  # padded or not: both are accepted
    lambda data, padded: ":" + base64.b64encode(data).decode().rstrip("" if padded else "=") + ":",
    st.binary(max_size=5),
    st.booleans(),
)
_broken_bare = st.one_of(
    st.builds("{}{}".format, st.sampled_from(["", "-", "+"]), st.text(_DIGITS, max_size=17)),  # none, or too many
    st.builds("{}.{}".format, st.text(_DIGITS, max_size=14), st.text(_DIGITS, max_size=5)),
    st.builds('"{}'.format, st.text(' a,;=\\"\t\x7fé', max_size=6)),  # bad escapes, controls, unterminated
    st.builds(":{}:".format, st.text("YQa0+/=_", max_size=7)),
    st.sampled_from([":", ":YQ", "?", "?2", "?10", "@1", '%"x"', "", "(", ")", ";", "é"]),
)
_bare = _mostly(
    st.one_of(
        _small, _small, _small, _integers, _decimals, _strings, _tokens, _binaries, st.sampled_from(["?0", "?1"])
    ),
    _broken_bare,
)
_params = st.lists(
    st.builds(
        "{}{}{}{}".format,
        _mostly(st.just(";"), st.sampled_from([" ;", ","])),
        _mostly(st.sampled_from(["", "", " ", "  "]), st.just("\t")),
        _keys,
        st.one_of(st.just(""), _bare.map("={}".format)),
    ),
    max_size=2,
).map("".join)
_inner = st.builds(
    "=({}{}){}".format,
    _mostly(st.sampled_from(["", " "]), st.just("\t")),
    st.lists(
        st.tuples(_bare, _params, _mostly(st.sampled_from([" ", "  "]), st.sampled_from(["", "\t", ","]))), max_size=3
    ).map(lambda items: "".join(b + p + s for b, p, s in items)),
    _params,
)
_values = st.one_of(_params, st.builds(str.__add__, _bare.map("={}".format), _params), _inner)
_u_members = st.builds("u={}{}".format, _small, _params)
_i_members = st.builds("i{}{}".format, st.sampled_from(["", "=?0", "=?1", "=1"]), _params)
_members = st.one_of(_u_members, _u_members, _i_members, st.builds(str.__add__, _keys, _values))
_separators = _mostly(
    st.sampled_from([",", ", ", ", ", " ,", " , ", ",\t", "\t,  "]), st.sampled_from([",,", ", ,", "", " ", ";"])
)


def _join(lead: str, members: list[str], separators: list[str], trail: str) -> str:
    return lead + "".join(m + s for m, s in zip(members, [*separators[: len(members) - 1], trail], strict=False))


_dictionaries = st.builds(
    _join,
    _mostly(st.sampled_from(["", "", " ", "  "]), st.just("\t")),
    st.lists(_members, min_size=1, max_size=5),
    st.lists(_separators, min_size=4, max_size=4),
    _mostly(st.sampled_from(["", "", "", " ", "\t", " \t "]), st.sampled_from([",", ", "])),
)
_headers = st.one_of(
    _dictionaries, _dictionaries, _dictionaries, st.text(alphabet='u=0123456789i, ;\t?.-"():aY*', max_size=14)
)


@given(_headers)
@settings(max_examples=3000, deadline=None)
@example("u=0, u=7")
@example("u=1;a=2")
@example("u=00")
@example('a="x, u=0", u=4')
def test_python_parser_matches_the_abnf_reference(header):
    assert parse_priority(header) == reference_priority(header)


@given(_headers)
@settings(max_examples=400, deadline=None)
@example("u=0, u=7")
@example("u=1, u=9")
@example("u=1;a=2")
@example("u=00")
@example("u=1, a=:====:")
def test_the_wasm_filter_and_python_agree_on_generated_dictionaries(header):
    assert filter_urgency_milli(header) == python_urgency_milli(header)
