"""Policy text: the condition keys, ``${variables}``, IAM's ``*``/``?`` wildcards and literal values with variables.

Patterns are compiled once when a policy is parsed; those with variables are finished per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

CONDITION_KEYS: frozenset[str] = frozenset(
    {
        "s3:prefix",
        "s3:delimiter",
        "s3:max-keys",
        "s3:versionid",
        "s3:x-amz-acl",
        "s3:x-amz-server-side-encryption",
        "s3:x-amz-server-side-encryption-aws-kms-key-id",
        "aws:sourceip",
        "aws:securetransport",
        "aws:currenttime",
        "aws:epochtime",
        "aws:username",
        "aws:userid",
    }
)
"""The condition keys (lower case) a policy may test or use as ``${variables}``."""

Context: TypeAlias = Mapping[str, str | tuple[str, ...]]
"""A request's condition keys, lower case, each one value or a tuple of them (a multivalued key)."""


def quote(text: str) -> str:
    """`text` in double quotes, as in error messages."""
    return json.dumps(text, ensure_ascii=False)


class Invalid(Exception):
    """A problem found below statement level; parse_policy adds the policy and statement."""


@dataclass(frozen=True)
class _Var:
    """A policy variable: the context value of `key`, else `default`; key None stands for a literal."""

    key: str | None
    default: str | None


_VARIABLE_BODY = re.compile(r"\s*([^\s,']+)\s*(?:,\s*'((?:[^']|'')*)'\s*)?")


def _split_variables(text: str) -> list[str | _Var]:
    """`text` as policy text and variables (IAM does one pass: a value is never re-expanded)."""
    parts: list[str | _Var] = []
    pos = 0
    while (start := text.find("${", pos)) >= 0:
        end = text.find("}", start)
        if end < 0:
            raise Invalid(f"unterminated policy variable in {quote(text)}")
        if start > pos:
            parts.append(text[pos:start])
        body = text[start + 2 : end]
        if body.strip() in ("*", "?", "$"):
            parts.append(_Var(None, body.strip()))
        else:
            match = _VARIABLE_BODY.fullmatch(body)
            if match is None:
                raise Invalid(f"malformed policy variable {quote(text[start : end + 1])}")
            key = match.group(1).lower()
            if key not in CONDITION_KEYS:
                raise Invalid(f"unknown policy variable {quote(text[start : end + 1])}")
            default = match.group(2)
            parts.append(_Var(key, None if default is None else default.replace("''", "'")))
        pos = end + 1
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def _glob_source(text: str) -> str:
    """IAM's wildcards as a regex: * any run (also of "/"), ? one character, everything else literal."""
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def _resolve(var: _Var, context: Context) -> str | None:
    if var.key is not None:
        value = context.get(var.key)
        # A multivalued key has no single value to put in (IAM: it cannot be a variable).
        if isinstance(value, str):
            return value
    return var.default


# A pattern as tokens: (regex source, length in characters) of policy text without "*", a
# variable, or None for a run of "*"s.
_Token: TypeAlias = tuple[str, int] | _Var | None
# The fixed-length pieces between the "*"s, as (regex source or compiled, length).
_Pieces: TypeAlias = list[tuple[str, int]]


def _tokens(text: str, variables: bool) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    for part in _split_variables(text) if variables else [text]:
        if isinstance(part, _Var):
            tokens.append(part)
            continue
        for i, chunk in enumerate(re.split(r"\*+", part)):
            if i:
                tokens.append(None)
            if chunk:
                tokens.append((_glob_source(chunk), len(chunk)))
    return tuple(tokens)


def _render(tokens: Sequence[_Token], context: Context) -> _Pieces | None:
    """The pieces between "*"s with variables put in (literally), or None if one has no value."""
    pieces: _Pieces = []
    source: list[str] = []
    length = 0
    for token in tokens:
        if token is None:
            pieces.append(("".join(source), length))
            source, length = [], 0
        elif isinstance(token, tuple):
            source.append(token[0])
            length += token[1]
        else:
            resolved = _resolve(token, context)
            if resolved is None:
                return None  # an unresolved variable matches nothing, as in IAM
            source.append(re.escape(resolved))  # a substituted value is literal: no wildcards in user names
            length += len(resolved)
    pieces.append(("".join(source), length))
    return pieces


def _match_pieces(pieces: Sequence[tuple[re.Pattern[str], int]], value: str) -> bool:
    """Whether `value` is piece * piece * ... * piece.

    The first piece must sit at the start, the last at the end, and each middle one is taken at its
    leftmost place after the one before: the pieces have fixed lengths, so leftmost is never wrong.
    That is O(len(value) x len(pattern)), where a backtracking regex of several ".*" is polynomial in
    len(value) with the number of stars as the exponent: seconds for a 1 KiB key the client chose.
    """
    (first, first_length), (last, last_length) = pieces[0], pieces[-1]
    end = len(value) - last_length
    if end < first_length or first.match(value) is None or last.match(value, end) is None:
        return False
    pos = first_length
    for piece, _ in pieces[1:-1]:
        found = piece.search(value, pos, end)
        if found is None:
            return False
        pos = found.end()
    return True


@dataclass(frozen=True)
class Glob:
    """A wildcard pattern: one regex if it has at most one "*", else its pieces; with variables, built per request."""

    regex: re.Pattern[str] | None
    pieces: tuple[tuple[re.Pattern[str], int], ...]
    tokens: tuple[_Token, ...]
    flags: int

    def matches(self, value: str, context: Context) -> bool:
        """Whether `value` matches the whole pattern, variables taken from `context`."""
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        if self.pieces:
            return _match_pieces(self.pieces, value)
        rendered = _render(self.tokens, context)
        if rendered is None:
            return False
        # re's own compile cache keeps this cheap for the few distinct values a deployment sees.
        if len(rendered) <= 2:
            return re.fullmatch(".*".join(source for source, _ in rendered), value, self.flags) is not None
        return _match_pieces([(re.compile(source, self.flags), n) for source, n in rendered], value)


def compile_glob(text: str, variables: bool, flags: int = re.DOTALL) -> Glob:
    """`text` as a wildcard pattern; `variables` says whether ``${...}`` is a policy variable or plain text."""
    tokens = _tokens(text, variables)
    if any(isinstance(token, _Var) and token.key is not None for token in tokens):
        return Glob(None, (), tokens, flags)
    rendered = _render(tokens, {})
    assert rendered is not None  # only ${*} ${?} ${$}, which always resolve
    if len(rendered) <= 2:
        # One ".*" backtracks at most linearly.
        return Glob(re.compile(".*".join(source for source, _ in rendered), flags), (), (), flags)
    return Glob(None, tuple((re.compile(source, flags), n) for source, n in rendered), (), flags)


@dataclass(frozen=True)
class Text:
    """A literal condition value, maybe with variables."""

    text: str | None
    parts: tuple[str | _Var, ...]

    def render(self, context: Context) -> str | None:
        """The value with variables put in, or None if one has no value in `context`."""
        if self.text is not None:
            return self.text
        out: list[str] = []
        for part in self.parts:
            resolved = part if isinstance(part, str) else _resolve(part, context)
            if resolved is None:
                return None
            out.append(resolved)
        return "".join(out)


def compile_text(text: str, variables: bool) -> Text:
    """`text` as a literal value, its variables (if `variables`) to be put in per request."""
    if not variables or "${" not in text:
        return Text(text, ())
    parts = tuple(_split_variables(text))
    if all(isinstance(p, str) or p.key is None for p in parts):
        return Text("".join(p if isinstance(p, str) else (p.default or "") for p in parts), ())
    return Text(None, parts)
