"""Which rule a base name falls under, and whether it is protected.

Rule patterns and ``protect`` globs are shell globs matched against a file's base name
exactly as ``find -name`` matches them: POSIX ``fnmatch(3)`` with no flags, from the C
library itself. ``[!x]`` and ``[^x]`` negate, ``\\*`` is a literal star, ``[[:digit:]]``
and the other classes work, and neither ``/`` nor a leading ``.`` is special. Names are
matched as the bytes they are on disk (``os.fsencode``), so a name that is not UTF-8 is
matched too. (Python's ``fnmatch`` gets every one of these wrong: with ``[^x]`` it removes
the very files the operator meant to keep.)

Calling the C library costs more than a regular expression, so each glob is compiled
once per sweep into a screen: its literal characters in order, with ``.*`` wherever it has
a wildcard. A name the screen rejects cannot match, and for a glob made of literals and
``*`` only (every default rule) the screen is the exact answer; only a name that passes
the screen of a glob with ``?``, ``[...]`` or ``\\`` is asked of ``fnmatch(3)``.

``glob_problem`` says what is wrong with a glob the configuration must refuse, and
``is_catch_all`` whether a glob selects (nearly) every name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cleaner.config_types import Rule

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_fnmatch = _libc.fnmatch
_fnmatch.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int)
_fnmatch.restype = ctypes.c_int

#: The character classes POSIX names, usable as ``[[:digit:]]``.
CLASSES = frozenset(
    {
        "alnum",
        "alpha",
        "blank",
        "cntrl",
        "digit",
        "graph",
        "lower",
        "print",
        "punct",
        "space",
        "upper",
        "xdigit",
    }
)

# Tokens of a parsed glob: a literal character, ``*``, or one character of anything else
# (``?`` or a bracket expression).
_STAR, _ONE = object(), object()


def _parse(glob: str) -> tuple[list[object], str | None]:
    """(tokens, problem): literals as 1-character strings, and what is wrong, if anything."""
    tokens: list[object] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "\\":
            if i + 1 == n:
                return tokens, "ends with a lone '\\' (it would match nothing; write '\\\\')"
            tokens.append(glob[i + 1])
            i += 2
        elif c == "*":
            tokens.append(_STAR)
            i += 1
        elif c == "?":
            tokens.append(_ONE)
            i += 1
        elif c == "[":
            end, problem = _bracket_end(glob, i)
            if problem:
                return tokens, problem
            tokens.append(_ONE)
            i = end + 1
        else:
            tokens.append(c)
            i += 1
    return tokens, None


def _bracket_end(glob: str, start: int) -> tuple[int, str | None]:
    """The index of the ``]`` closing the bracket expression at ``start``, or a problem."""
    n = len(glob)
    j = start + 1
    if j < n and glob[j] in "!^":
        j += 1
    if j < n and glob[j] == "]":
        j += 1  # a ']' first is a member, not the end
    while j < n and glob[j] != "]":
        if glob[j] == "\\":
            j += 2
            continue
        if glob[j] == "[" and j + 1 < n and glob[j + 1] in ":=.":
            delimiter = glob[j + 1]
            if delimiter != ":":
                return j, "has [= =] or [. .] (only [:class:] is supported in brackets)"
            close = glob.find(":]", j + 2)
            if close < 0:
                return j, "has a '[:' that no ':]' closes"
            name = glob[j + 2 : close]
            if name not in CLASSES:
                return j, f"has an unknown class [:{name}:] (known: {', '.join(sorted(CLASSES))})"
            j = close + 2
            continue
        j += 1
    if j >= n:
        return j, "has a '[' that no ']' closes (write '\\[' for a literal bracket)"
    return j, None


def glob_problem(glob: str) -> str | None:
    """What makes a glob unfit for the configuration, or None.

    Refused: a trailing lone backslash (matches nothing), an unclosed ``[`` or ``[:``, an
    unknown class, ``[= =]`` and ``[. .]`` (their meaning depends on the locale).
    """
    return _parse(glob)[1]


def is_catch_all(glob: str) -> bool:
    """Whether the glob has no literal character but dots: ``*``, ``?*``, ``.*``, ``*.*``...

    Such a glob selects every name (or every name with a dot, every hidden name), whatever
    the application put there: the configuration refuses it without ``allow_dangerous``.
    """
    tokens, _ = _parse(glob)
    return all(not isinstance(t, str) or t == "." for t in tokens)


class _Glob:
    """One glob, compiled: its screen, whether the screen is exact, and its bytes."""

    __slots__ = ("encoded", "exact", "screen", "source")

    def __init__(self, glob: str) -> None:
        tokens, problem = _parse(glob)
        parts: list[str] = []
        for token in tokens:
            if isinstance(token, str):
                parts.append(re.escape(token))
            elif not parts or parts[-1] != ".*":
                parts.append(".*")
        # A glob the configuration would refuse never matches here (fnmatch(3) says the
        # same of a trailing backslash); it cannot reach a sweep through check-config.
        self.source = "(?!)" if problem else "".join(parts)
        self.screen = re.compile(self.source, re.DOTALL)
        self.exact = problem is not None or all(t is _STAR or isinstance(t, str) for t in tokens)
        self.encoded = os.fsencode(glob)

    def matches(self, name: str) -> bool:
        if self.screen.fullmatch(name) is None:
            return False
        return self.exact or _fnmatch(self.encoded, os.fsencode(name), 0) == 0


def fnmatch(name: str, glob: str) -> bool:
    """Whether the base name matches the glob, as ``find -name`` says."""
    return _Glob(glob).matches(name)


def _screen(globs: list[_Glob]) -> re.Pattern[str]:
    alternatives = (f"(?P<g{i}>{g.source})" for i, g in enumerate(globs))
    return re.compile("|".join(alternatives) or "(?!)", re.DOTALL)


class Globs(tuple[str, ...]):
    """Base-name globs compiled once: a name costs one screen, and rarely a libc call."""

    compiled: list[_Glob]
    screen: re.Pattern[str]

    def __new__(cls, globs: tuple[str, ...]) -> Globs:
        self = super().__new__(cls, globs)
        self.compiled = [_Glob(g) for g in globs]
        self.screen = _screen(self.compiled)
        return self

    def any(self, name: str) -> bool:
        found = self.screen.fullmatch(name)
        if found is None:
            return False
        return self.compiled[int(found.lastindex or 1) - 1].exact or any(
            g.matches(name) for g in self.compiled
        )


class RuleSet(tuple["Rule", ...]):
    """Rules compiled once; the first rule in order whose pattern matches names the rule."""

    compiled: list[_Glob]
    screen: re.Pattern[str]

    def __new__(cls, rules: tuple[Rule, ...]) -> RuleSet:
        self = super().__new__(cls, rules)
        self.compiled = [_Glob(r.pattern) for r in rules]
        self.screen = _screen(self.compiled)
        return self

    def first(self, name: str) -> Rule | None:
        # The screen's alternatives are tried in order, each anchored at both ends: the
        # group that matched is the first rule whose screen passes. Those before it cannot
        # match; if its screen is not the exact answer, the rules after it are asked in turn.
        # (Screens hold no group of their own, so group i + 1 is rule i.)
        found = self.screen.fullmatch(name)
        if found is None:
            return None
        start = int(found.lastindex or 1) - 1
        if self.compiled[start].exact:
            return self[start]
        for i in range(start, len(self.compiled)):
            if self.compiled[i].matches(name):
                return self[i]
        return None


def is_protected(name: str, protect: tuple[str, ...]) -> bool:
    """Whether the base name matches any ``protect`` glob."""
    globs = protect if isinstance(protect, Globs) else Globs(protect)
    return globs.any(name)


def match_rule(name: str, rules: tuple[Rule, ...]) -> Rule | None:
    """The first rule whose pattern matches the base name, in configuration order."""
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet(rules)
    return ruleset.first(name)
