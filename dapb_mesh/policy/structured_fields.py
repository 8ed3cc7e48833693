"""RFC 8941 structured-field Dictionaries, parsed exactly as section 4.2 says (RFC 9218 `priority` is one).

Only what a Dictionary needs: bare items, parameters, inner lists. A field that does not parse as a whole is
None, which RFC 8941 section 4.2 says to treat as if the field were absent. The Wasm filter has the same parser in
C (wasm_filter/dapb_filter.c: priority_urgency_milli); tests/test_priority_rfc9218.py checks they agree.
"""

from __future__ import annotations

import base64
import re

_LCALPHA = frozenset("abcdefghijklmnopqrstuvwxyz")
_DIGIT = frozenset("0123456789")
_ALPHA = _LCALPHA | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_KEY_FIRST = _LCALPHA | {"*"}
_KEY_REST = _LCALPHA | _DIGIT | frozenset("_-.*")
_TOKEN_REST = _ALPHA | _DIGIT | frozenset("!#$%&'*+-.^_`|~:/")  # tchar, ":" and "/"
# Base64 that decodes: unpadded tails are synthesised (RFC 8941 4.2.7 asks parsers to accept them), but "=" only
# as the padding of a whole last quantum, and never a lone 6-bit tail.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?")


class Token(str):
    """An sf-token, kept apart from an sf-string of the same text."""


BareItem = int | float | str | Token | bytes | bool
Parameters = dict[str, BareItem]
Item = tuple[BareItem, Parameters]
Member = tuple[BareItem | list[Item], Parameters]  # an item, or an inner list with its parameters


class _Fail(Exception):
    pass


class _Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1

    def key(self) -> str:  # 4.2.3.3
        start = self.i
        if self.peek() not in _KEY_FIRST:  # "" (the end) is in no set
            raise _Fail
        while self.peek() in _KEY_REST:
            self.i += 1
        return self.s[start : self.i]

    def parameters(self) -> Parameters:  # 4.2.3.2: a repeated key keeps its last value
        params: Parameters = {}
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            name = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare_item()
            params[name] = value
        return params

    def item(self) -> Item:  # 4.2.3
        return self.bare_item(), self.parameters()

    def inner_list(self) -> list[Item]:  # 4.2.1.2
        self.i += 1  # "("
        items: list[Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                return items
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise _Fail

    def bare_item(self) -> BareItem:  # 4.2.3.1
        ch = self.peek()
        if ch == "-" or ch in _DIGIT:
            return self.number()
        if ch == '"':
            return self.string()
        if ch == "*" or ch in _ALPHA:
            start = self.i
            self.i += 1
            while self.peek() in _TOKEN_REST:
                self.i += 1
            return Token(self.s[start : self.i])
        if ch == ":":
            end = self.s.find(":", self.i + 1)
            data = self.s[self.i + 1 : end]
            if end < 0 or not _BASE64.fullmatch(data):
                raise _Fail
            self.i = end + 1
            return base64.b64decode(data + "=" * (-len(data) % 4))
        if ch == "?" and self.s[self.i + 1 : self.i + 2] in ("0", "1"):
            self.i += 2
            return self.s[self.i - 1] == "1"
        raise _Fail

    def number(self) -> int | float:  # 4.2.4: at most 15 integer digits; a decimal has 12 + "." + 1..3
        sign = 1
        if self.peek() == "-":
            sign, self.i = -1, self.i + 1
        if self.peek() not in _DIGIT:
            raise _Fail
        start, dot = self.i, -1
        while self.peek():
            ch = self.peek()
            if ch == "." and dot < 0:
                if self.i - start > 12:
                    raise _Fail
                dot = self.i
            elif ch not in _DIGIT:
                break
            self.i += 1
            if self.i - start > (15 if dot < 0 else 16):
                raise _Fail
        text = self.s[start : self.i]
        if dot < 0:
            return sign * int(text)
        if not 1 <= self.i - dot - 1 <= 3:
            raise _Fail
        return sign * float(text)

    def string(self) -> str:  # 4.2.5: printable ASCII, with only \" and \\ as escapes
        self.i += 1
        out = []
        while True:
            ch = self.peek()
            if not ch:
                raise _Fail
            self.i += 1
            if ch == "\\":
                ch = self.peek()
                if ch not in ('"', "\\"):
                    raise _Fail
                self.i += 1
            elif ch == '"':
                return "".join(out)
            elif not " " <= ch <= "~":
                raise _Fail
            out.append(ch)


def parse_dictionary(text: str) -> dict[str, Member] | None:
    """The Dictionary in a field value (RFC 8941 4.2 and 4.2.2), or None if the value does not parse as a whole.

    A key given twice keeps its last value. Leading SP and trailing OWS are allowed, as the algorithm says.
    """
    p = _Parser(text)
    members: dict[str, Member] = {}
    try:
        p.skip(" ")
        while p.peek():
            name = p.key()
            if p.peek() != "=":
                members[name] = (True, p.parameters())
            elif p.s[p.i + 1 : p.i + 2] == "(":
                p.i += 1
                items = p.inner_list()
                members[name] = (items, p.parameters())
            else:
                p.i += 1
                members[name] = p.item()
            p.skip(" \t")
            if not p.peek():
                break
            if p.peek() != ",":
                raise _Fail
            p.i += 1
            p.skip(" \t")
            if not p.peek():
                raise _Fail  # a trailing comma
    except _Fail:
        return None
    return members
