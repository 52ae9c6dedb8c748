"""semver.py RANGE: the newest version on stdin (one a line) that npm's
semver range RANGE (package.json's engines) allows; nothing when none
does. It runs with the stack's Python, before Node.js is installed.

Ranges are read as npm's semver package reads them: comparator sets
joined by ||, each a list of comparators (<, <=, >, >=, = and bare
versions), hyphen ranges (1.2 - 2.3), x-ranges (1.x, 1.2.*, 1),
tilde (~1.2.3) and caret (^0.2.3) ranges. Prereleases are never picked
(the registries' lists this reads hold releases), and a range's own
prerelease or build tags are dropped. A range it cannot read is an
error (exit status 2) with a message on stderr.
"""

import re
import sys

_PART = r"(?:0|[1-9]\d*|[xX*])"
_PARTIAL = re.compile(
    r"^v?(?P<maj>%s)(?:\.(?P<min>%s)(?:\.(?P<pat>%s)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)?)?$"
    % (_PART, _PART, _PART)
)
_OP = re.compile(r"^(<=|>=|<|>|=|~>|~|\^)?\s*(.*)$")


class RangeError(ValueError):
    pass


def _partial(s):
    """(major, minor, patch) with None for a missing or wildcard part."""
    m = _PARTIAL.match(s)
    if not m:
        raise RangeError("%r is not a version" % s)
    parts = []
    for k in ("maj", "min", "pat"):
        v = m.group(k)
        if v is None or v in ("x", "X", "*"):
            parts.append(None)
        else:
            parts.append(int(v))
    # A wildcard makes the parts after it wildcards too (1.x.3 is 1.x).
    for i, v in enumerate(parts):
        if v is None:
            parts[i + 1 :] = [None] * (len(parts) - i - 1)
            break
    return tuple(parts)


def _lower(p):
    return tuple(v or 0 for v in p)


def _comparators(op, p):
    """The primitive comparators [(op, (M, m, p))] one range part means."""
    M, m, pa = p
    if M is None:  # *, x, or nothing
        return [] if op in ("", "=", ">=", "<=", "~", "~>", "^") else (
            [("<", (0, 0, 0))] if op in ("<", ">") else [])
    if op in ("", "="):
        if m is None:
            return [(">=", (M, 0, 0)), ("<", (M + 1, 0, 0))]
        if pa is None:
            return [(">=", (M, m, 0)), ("<", (M, m + 1, 0))]
        return [("=", (M, m, pa))]
    if op in ("~", "~>"):
        if m is None:
            return [(">=", (M, 0, 0)), ("<", (M + 1, 0, 0))]
        return [(">=", (M, m, pa or 0)), ("<", (M, m + 1, 0))]
    if op == "^":
        lo = (M, m or 0, pa or 0)
        if M > 0 or m is None:
            return [(">=", lo), ("<", (M + 1, 0, 0))]
        if m > 0 or pa is None:
            return [(">=", lo), ("<", (0, m + 1, 0))]
        return [(">=", lo), ("<", (0, 0, pa + 1))]
    if op == ">":
        if m is None:
            return [(">=", (M + 1, 0, 0))]
        if pa is None:
            return [(">=", (M, m + 1, 0))]
        return [(">", (M, m, pa))]
    if op == ">=":
        return [(">=", _lower(p))]
    if op == "<":
        return [("<", _lower(p))]
    if op == "<=":
        if m is None:
            return [("<", (M + 1, 0, 0))]
        if pa is None:
            return [("<", (M, m + 1, 0))]
        return [("<=", (M, m, pa))]
    raise RangeError("unknown operator %r" % op)


def parse(rng):
    """The range as a list of comparator sets."""
    sets = []
    for alt in rng.split("||"):
        alt = alt.strip()
        if alt in ("", "*", "x", "X", "latest"):
            sets.append([])
            continue
        # Hyphen ranges: "A - B" (the spaces are required).
        h = re.match(r"^(\S+)\s+-\s+(\S+)$", alt)
        if h:
            lo, hi = _partial(h.group(1)), _partial(h.group(2))
            sets.append(_comparators(">=", lo) + _comparators("<=", hi))
            continue
        # ">= 1.2" is one comparator.
        alt = re.sub(r"(<=|>=|<|>|=|~>|~|\^)\s+", r"\1", alt)
        cs = []
        for tok in alt.split():
            op, rest = _OP.match(tok).groups()
            cs += _comparators(op or "", _partial(rest))
        sets.append(cs)
    return sets


def _ok(v, op, w):
    return {
        "=": v == w, "<": v < w, "<=": v <= w, ">": v > w, ">=": v >= w,
    }[op]


def satisfies(v, sets):
    return any(all(_ok(v, op, w) for op, w in cs) for cs in sets)


def newest(rng, versions):
    sets = parse(rng)
    best = None
    for s in versions:
        m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", s.strip())
        if not m:
            continue  # prereleases and junk
        v = tuple(int(x) for x in m.groups())
        if satisfies(v, sets) and (best is None or v > best):
            best = v
    return None if best is None else "%d.%d.%d" % best


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: semver.py RANGE < versions\n")
        return 2
    try:
        v = newest(sys.argv[1], sys.stdin.read().split())
    except RangeError as e:
        sys.stderr.write("%s\n" % e)
        return 2
    if v:
        print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
