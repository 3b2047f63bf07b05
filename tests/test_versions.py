"""Versions and ranges: a table of known answers, and a property test against node-semver."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archive.errors import InvalidRangeError, InvalidVersionError
from archive.versions import check_release_version, parse_range, parse_version

AVAILABLE = ["0.1.0", "0.1.5", "0.2.0", "1.0.0", "1.2.0", "1.2.3", "1.2.9", "1.3.0-rc.1", "1.3.0",
             "1.10.0", "2.0.0-alpha", "2.0.0", "2.5.1", "3.0.0-beta.2"]


@pytest.mark.parametrize("spec, expected", [
    ("^1.2", "1.10.0"),
    ("^1.2.3", "1.10.0"),
    ("~1.2.3", "1.2.9"),
    ("~1.2", "1.2.9"),
    ("1.x", "1.10.0"),
    ("1", "1.10.0"),
    ("1.2", "1.2.9"),
    ("*", "2.5.1"),
    ("", "2.5.1"),
    (">=1.0,<2.0", "1.10.0"),
    (">=1.0 <2.0", "1.10.0"),
    (">= 1.0, < 2.0", "1.10.0"),
    ("==1.2.3", "1.2.3"),
    ("1.2.3", "1.2.3"),
    ("=1.2.3", "1.2.3"),
    ("v1.2.3", "1.2.3"),
    ("^0.1", "0.1.5"),
    ("^0.1.0", "0.1.5"),
    ("<1.2", "1.0.0"),
    ("<=1.2", "1.2.9"),
    (">1.2", "2.5.1"),
    ("1.0 - 1.2", "1.2.9"),
    ("1.0.0 - 1.2.3", "1.2.3"),
    ("^0.1 || ^2", "2.5.1"),
    ("~1.2 || 0.2.0", "1.2.9"),
    ("^1.3.0-rc.0", "1.10.0"),
    (">=1.3.0-rc.0 <1.3.0", "1.3.0-rc.1"),
    ("^3.0.0-beta", "3.0.0-beta.2"),
    ("^4", None),
    ("<0.1.0", None),
])
def test_highest_match(spec: str, expected: str | None) -> None:
    assert parse_range(spec).best(AVAILABLE) == expected


def test_prereleases_only_when_asked() -> None:
    assert parse_range("^2.0.0-0").best(["2.0.0-alpha"]) == "2.0.0-alpha"
    assert parse_range("*").best(["2.0.0-alpha"]) is None
    assert parse_range("*", include_prerelease=True).best(["2.0.0-alpha"]) == "2.0.0-alpha"
    assert parse_range(">=1", include_prerelease=True).best(AVAILABLE) == "3.0.0-beta.2"
    assert parse_range("^1.3", include_prerelease=True).best(["1.3.0-rc.1"]) == "1.3.0-rc.1"


@pytest.mark.parametrize("bad", ["^", "1.2.3.4", ">>1", "a.b.c", "1.2.3 - ", "1 - 2 - 3", "~>1.2",
                                 "1.2.3-", "^1.x-rc", ">=1.0,,<", "x" * 2000, "1.2 !! 2"])
def test_invalid_ranges_raise(bad: str) -> None:
    with pytest.raises(InvalidRangeError, match="invalid version range"):
        parse_range(bad)


@pytest.mark.parametrize("bad", ["1", "1.2", "01.2.3", "1.2.3-", "v1.2.3", "1.2.3.4", "", " 1.2.3"])
def test_invalid_versions_raise(bad: str) -> None:
    with pytest.raises(InvalidVersionError, match="invalid version"):
        parse_version(bad)


@pytest.mark.parametrize("bad, reason", [("1.0.0+build.5", "build metadata"), ("1.0.0-RC.1", "lowercase")])
def test_release_versions_refuse_ambiguous_forms(bad: str, reason: str) -> None:
    with pytest.raises(InvalidVersionError, match=reason):
        check_release_version(bad)


def test_release_version_accepts_prerelease() -> None:
    assert check_release_version("2.1.0-rc.1") == "2.1.0-rc.1"


# ---------------------------------------------------------------- property test
small = st.integers(min_value=0, max_value=3)
prerelease = st.one_of(st.none(), st.sampled_from(["alpha", "alpha.1", "beta", "rc.1", "rc.2", "0"]))


@st.composite
def versions(draw) -> str:
    text = f"{draw(small)}.{draw(small)}.{draw(small)}"
    pre = draw(prerelease)
    return f"{text}-{pre}" if pre else text


@st.composite
def partials(draw) -> str:
    parts = [str(draw(small))]
    for _ in range(draw(st.integers(0, 2))):
        parts.append(draw(st.sampled_from([str(draw(small)), "x", "*"])))
    text = ".".join(parts)
    if len(parts) == 3 and "x" not in parts and "*" not in parts:
        pre = draw(prerelease)
        if pre:
            text += f"-{pre}"
    return text


@st.composite
def comparator_sets(draw) -> str:
    kind = draw(st.sampled_from(["op", "op", "hyphen", "star"]))
    if kind == "star":
        return "*"
    if kind == "hyphen":
        return f"{draw(partials())} - {draw(partials())}"
    count = draw(st.integers(1, 2))
    ops = st.sampled_from(["", "=", "^", "~", ">", ">=", "<", "<="])
    return " ".join(f"{draw(ops)}{draw(partials())}" for _ in range(count))


ranges = st.lists(comparator_sets(), min_size=1, max_size=2).map(" || ".join)


@given(spec=ranges, version=versions(), include_pre=st.booleans())
def test_matches_npm_semver(semver_oracle, spec: str, version: str, include_pre: bool) -> None:
    """Our matcher agrees with npm's own semver package on generated ranges and versions."""
    ours = parse_range(spec, include_pre).matches(parse_version(version))
    theirs = semver_oracle({"range": spec, "version": version, "pre": include_pre})["ok"]
    assert ours == theirs, f"{version!r} in {spec!r} (include_prerelease={include_pre})"


@given(spec=ranges, available=st.lists(versions(), min_size=1, max_size=8, unique=True))
def test_best_is_npm_max_satisfying(semver_oracle, spec: str, available: list[str]) -> None:
    theirs = semver_oracle({"range": spec, "versions": available, "pre": False})["best"]
    assert parse_range(spec).best(available) == theirs


@given(st.lists(versions(), min_size=1, max_size=30))
def test_sort_keys_order_like_semver(texts: list[str]) -> None:
    from archive.versions import key_of, sort_versions, version_key

    assert sort_versions(texts) == [str(v) for v in sorted(parse_version(t) for t in texts)]
    assert all(key_of(t) == version_key(parse_version(t)) for t in texts)


@pytest.mark.parametrize("text", ["1.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+b", "v1.0.0", "index.json"])
def test_non_canonical_strings_have_no_key(text: str) -> None:
    from archive.versions import key_of

    assert key_of(text) is None
