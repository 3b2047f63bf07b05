"""Strict SemVer 2.0 versions and the ranges that select them.

Versions are parsed by the ``semver`` package. Ranges follow the npm grammar users already know:
``^1.2``, ``~1.2.3``, ``1.x``, ``*``, ``>=1.0,<2.0`` (comma or space for AND), ``==1.2.3``,
``1.2.3``, hyphen ranges ``1.0 - 2.0`` and ``A || B``. Every form is reduced to a union of
intersections of plain comparators (:class:`Comparator`), so matching is one small loop.
Prereleases match only when a comparator of the same set names a prerelease of the same
``major.minor.patch``, or when ``include_prerelease`` is set; the highest match wins.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import semver

from .errors import InvalidRangeError, InvalidVersionError

Version = semver.Version
_OPS: dict[str, Callable[[Version, Version], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "=": operator.eq,
}
_PARTIAL = re.compile(
    r"(?P<op>\^|~|>=|<=|>|<|==|=)?\s*v?"
    r"(?P<major>\d+|[xX*])(?:\.(?P<minor>\d+|[xX*]))?(?:\.(?P<patch>\d+|[xX*]))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_HYPHEN = re.compile(r"\s+-\s+")
_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_CANONICAL = re.compile(rf"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-({_ID}(?:\.{_ID})*))?")


def parse_version(text: str) -> Version:
    """Parse a strict SemVer 2.0 version (``1.2.3``, ``1.2.3-rc.1``); else InvalidVersionError."""
    if not isinstance(text, str):
        raise InvalidVersionError(f"invalid version {text!r}: not a string")
    try:
        return Version.parse(text)
    except (ValueError, TypeError):
        raise InvalidVersionError(
            f"invalid version {text!r}: use SemVer MAJOR.MINOR.PATCH, e.g. 1.0.0 or 2.1.0-rc.1") from None


VersionKey = tuple  # (major, minor, patch, is_release, prerelease identifiers): orders like SemVer


def version_key(version: Version) -> VersionKey:
    """A plain tuple that sorts exactly as SemVer precedence orders versions.

    A release sorts after its prereleases (``is_release``); prerelease identifiers compare
    numerically when numeric, else as ASCII, and numeric ones sort first. Tuples compare in C,
    so sorting and matching thousands of versions stays fast.
    """
    pre = version.prerelease
    if not pre:
        return (version.major, version.minor, version.patch, 1, ())
    ids = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split("."))
    return (version.major, version.minor, version.patch, 0, ids)


def key_of(text: str) -> VersionKey | None:
    """The sort key of a canonical version string, or None if it is not one (fast path for
    listings of thousands of versions)."""
    match = _CANONICAL.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    if not pre:
        return (int(major), int(minor), int(patch), 1, ())
    ids = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split("."))
    return (int(major), int(minor), int(patch), 0, ids)


def sort_versions(versions: Iterable[str], newest_first: bool = False) -> list[str]:
    """Canonical version strings in SemVer order; anything else is dropped."""
    keyed = [(key, text) for text in versions if (key := key_of(text)) is not None]
    keyed.sort(reverse=newest_first)
    return [text for _, text in keyed]


@dataclass(frozen=True)
class Comparator:
    """``version <op> bound`` for one of ``>=``, ``<=``, ``>``, ``<``, ``=``."""

    op: str
    bound: Version

    @property
    def key(self) -> VersionKey:
        return version_key(self.bound)

    def test(self, version: Version) -> bool:
        return _OPS[self.op](version_key(version), self.key)

    def __str__(self) -> str:
        return f"{self.op}{self.bound}"


@dataclass(frozen=True)
class VersionRange:
    """A parsed range: a union (``||``) of intersections of comparators."""

    text: str
    sets: tuple[tuple[Comparator, ...], ...]
    include_prerelease: bool = False

    def matches(self, version: Version) -> bool:
        """True when ``version`` satisfies the range under the npm prerelease rule."""
        return self.matches_key(version_key(version))

    def matches_key(self, key: VersionKey) -> bool:
        tests = self._tests()
        return any(_set_matches(comparators, key, self.include_prerelease) for comparators in tests)

    def best(self, versions: Iterable[str]) -> str | None:
        """The highest of ``versions`` (canonical strings) that matches, or None."""
        found = [(key, text) for text in versions
                 if (key := key_of(text)) is not None and self.matches_key(key)]
        return max(found)[1] if found else None

    def _tests(self) -> tuple[tuple[tuple[Callable, VersionKey], ...], ...]:
        """The comparators as (operator, bound key) pairs, built once per range."""
        cached = self.__dict__.get("_compiled")
        if cached is None:
            cached = tuple(tuple((_OPS[c.op], c.key) for c in comparators) for comparators in self.sets)
            object.__setattr__(self, "_compiled", cached)
        return cached

    def __str__(self) -> str:
        return self.text


def _set_matches(tests: tuple[tuple[Callable, VersionKey], ...], key: VersionKey, include_prerelease: bool) -> bool:
    if not all(op(key, bound) for op, bound in tests):
        return False
    if key[3] or include_prerelease:
        return True
    return any(not bound[3] and bound[:3] == key[:3] for _, bound in tests)


def parse_range(text: str, include_prerelease: bool = False) -> VersionRange:
    """Parse a version range; a malformed one raises :class:`InvalidRangeError`.

    With ``include_prerelease``, prereleases match like any version, and the lower bounds that
    a partial version implies start at its first prerelease (``^1.2`` admits ``1.2.0-rc.1``),
    as in npm.

    >>> [str(c) for c in parse_range("^1.2").sets[0]]
    ['>=1.2.0', '<2.0.0-0']
    """
    if not isinstance(text, str) or len(text) > 1024:
        raise InvalidRangeError(f"invalid version range {text!r}")
    z = "0" if include_prerelease else None
    try:
        sets = tuple(_parse_set(part.strip(), z) for part in text.split("||"))
    except ValueError as exc:
        raise InvalidRangeError(f"invalid version range {text!r}: {exc}") from None
    return VersionRange(text, sets, include_prerelease)


def _parse_set(text: str, z: str | None) -> tuple[Comparator, ...]:
    hyphen = _HYPHEN.split(text)
    if len(hyphen) == 2:
        return _hyphen_range(*hyphen, z)
    if len(hyphen) > 2:
        raise ValueError("more than one ' - ' in a hyphen range")
    tokens = [t for t in re.split(r"[\s,]+", _join_operators(text)) if t]
    if not tokens:
        return (_any(z),)
    return tuple(c for token in tokens for c in _desugar(token, z))


def _any(z: str | None) -> Comparator:
    return Comparator(">=", Version(0, 0, 0, prerelease=z))


def _join_operators(text: str) -> str:
    """Allow ``>= 1.0`` by removing space after an operator."""
    return re.sub(r"(\^|~|>=|<=|>|<|==|=)\s+", r"\1", text)


def _match_partial(token: str) -> re.Match[str]:
    match = _PARTIAL.fullmatch(token)
    if not match:
        raise ValueError(f"cannot read {token!r}")
    return match


def _numbers(match: re.Match[str]) -> tuple[int | None, int | None, int | None]:
    """Major, minor, patch as ints, None where wildcard or missing; wildcards stop the chain."""
    out: list[int | None] = []
    for part in (match["major"], match["minor"], match["patch"]):
        out.append(None if part is None or part in "xX*" or (out and out[-1] is None) else int(part))
    return out[0], out[1], out[2]


def _desugar(token: str, z: str | None) -> list[Comparator]:
    match = _match_partial(token)
    op = match["op"] or "="
    major, minor, patch = _numbers(match)
    pre = match["pre"]
    if pre and patch is None:
        raise ValueError(f"a prerelease needs a full version in {token!r}")
    if major is None:
        return [Comparator("<", Version(0, 0, 0, prerelease="0"))] if op in ("<", ">") else [_any(z)]
    if op == "~":  # as in npm, a tilde's lower bound never starts at a prerelease
        return _tilde(major, minor, patch, pre)
    if patch is None:
        pre = z  # a partial lower bound starts at the first prerelease when those are wanted
    if op == "^":
        return _caret(major, minor, patch, pre)
    return _primitive("=" if op == "==" else op, major, minor, patch, pre)


def _v(major: int | None, minor: int | None = 0, patch: int | None = 0, pre: str | None = None) -> Version:
    return Version(major or 0, minor or 0, patch or 0, prerelease=pre)


def _below(major: int, minor: int | None = None) -> Comparator:
    """The exclusive upper bound just above ``major`` (or ``major.minor``), below any prerelease."""
    if minor is None:
        return Comparator("<", Version(major + 1, 0, 0, prerelease="0"))
    return Comparator("<", Version(major, minor + 1, 0, prerelease="0"))


def _caret(major: int, minor: int | None, patch: int | None, pre: str | None) -> list[Comparator]:
    low = Comparator(">=", _v(major, minor, patch, pre))
    if major > 0 or minor is None:
        return [low, _below(major)]
    if minor > 0 or patch is None:
        return [low, _below(0, minor)]
    return [low, Comparator("<", Version(0, 0, patch + 1, prerelease="0"))]


def _tilde(major: int, minor: int | None, patch: int | None, pre: str | None) -> list[Comparator]:
    low = Comparator(">=", _v(major, minor, patch, pre))
    return [low, _below(major)] if minor is None else [low, _below(major, minor)]


def _primitive(op: str, major: int, minor: int | None, patch: int | None, pre: str | None) -> list[Comparator]:
    if patch is not None:
        return [Comparator(op, _v(major, minor, patch, pre))]
    upper = _below(major) if minor is None else _below(major, minor)
    low = _v(major, minor, 0, pre)
    if op == "=":
        return [Comparator(">=", low), upper]
    if op == ">":
        return [Comparator(">=", upper.bound.replace(prerelease=pre))]
    if op == "<=":
        return [upper]
    if op == "<":
        return [Comparator("<", Version(major, minor or 0, 0, prerelease="0"))]
    return [Comparator(">=", low)]


def _hyphen_range(low_text: str, high_text: str, z: str | None) -> tuple[Comparator, ...]:
    low = _match_partial(low_text)
    high = _match_partial(high_text)
    if low["op"] or high["op"]:
        raise ValueError("no operators inside a hyphen range")
    lmaj, lmin, lpat = _numbers(low)
    hmaj, hmin, hpat = _numbers(high)
    lower = [Comparator(">=", _v(lmaj, lmin, lpat, low["pre"] or z))] if lmaj is not None else []
    if hmaj is None:
        upper: list[Comparator] = []
    elif hpat is None:
        upper = [_below(hmaj, hmin)]
    elif z and not high["pre"]:
        upper = [Comparator("<", Version(hmaj, hmin or 0, hpat + 1, prerelease=z))]
    else:
        upper = [Comparator("<=", _v(hmaj, hmin, hpat, high["pre"]))]
    return tuple(lower + upper) or (_any(z),)


def check_release_version(text: str) -> str:
    """Check a version to publish under; return its canonical text.

    Beyond strict SemVer, a published version may not carry build metadata (``+build``), which
    SemVer ignores when ordering, so two releases would tie; nor uppercase letters, so that no two
    versions clash on a case-insensitive filesystem.
    """
    version = parse_version(text)
    if version.build:
        raise InvalidVersionError(
            f"invalid version {text!r}: build metadata ('+{version.build}') does not order releases; drop it")
    if text != text.lower():
        raise InvalidVersionError(f"invalid version {text!r}: use lowercase prerelease tags")
    return str(version)
