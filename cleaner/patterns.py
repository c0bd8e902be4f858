"""Which rule a base name falls under, and whether it is protected.

Rule patterns and ``protect`` globs are shell globs matched against a file's base name
with ``fnmatchcase`` semantics. ``Globs`` and ``RuleSet`` compile a whole list into one
expression, once per sweep, so a name costs one match however many globs there are;
``is_protected`` and ``match_rule`` also take plain tuples (as read from the
configuration) and then match glob by glob, with the same result.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase, translate

from cleaner.config import Rule


class Globs(tuple[str, ...]):
    """Base-name globs with one compiled expression: ``fnmatchcase`` of any, in one match."""

    regex: re.Pattern[str]

    def __new__(cls, globs: tuple[str, ...]) -> Globs:
        self = super().__new__(cls, globs)
        self.regex = re.compile("|".join(f"(?:{translate(g)})" for g in globs) or "(?!)")
        return self


class RuleSet(tuple[Rule, ...]):
    """Rules with one compiled expression; the first matching alternative names the rule."""

    regex: re.Pattern[str]

    def __new__(cls, rules: tuple[Rule, ...]) -> RuleSet:
        self = super().__new__(cls, rules)
        alternatives = (f"(?P<r{i}>{translate(r.pattern)})" for i, r in enumerate(rules))
        self.regex = re.compile("|".join(alternatives) or "(?!)")
        return self


def is_protected(name: str, protect: tuple[str, ...]) -> bool:
    """Whether the base name matches any ``protect`` glob."""
    if isinstance(protect, Globs):
        return protect.regex.match(name) is not None
    return any(fnmatchcase(name, glob) for glob in protect)


def match_rule(name: str, rules: tuple[Rule, ...]) -> Rule | None:
    """The first rule whose pattern matches the base name, in configuration order."""
    if isinstance(rules, RuleSet):
        # Alternatives are tried left to right and each is anchored at the end, so the
        # group that matched is the first rule in order that matches the whole name.
        found = rules.regex.match(name)
        return None if found is None else rules[int(str(found.lastgroup)[1:])]
    for rule in rules:
        if fnmatchcase(name, rule.pattern):
            return rule
    return None
