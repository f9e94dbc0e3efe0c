"""Stage 1, corpus: the built-in `string_rewrite` source.

An instruction is a rewrite rule ``x -> y``: replace the leftmost occurrence of ``x`` in the
input ``z`` by ``y``; if ``x`` does not occur, the output is ``z`` unchanged (a no-op).
Semantic domains are families of patterns ``x`` (Zhang, Wang, Charton 2024):

- ``repeated``: one character repeated, ``aaa``;
- ``periodic``: at least two full periods of a non-constant base, ``abab``;
- ``mirrored``: a palindrome that is neither of the above, ``aba``, ``abba``;
- ``random``: any pattern that is none of the above.

The families are disjoint by construction (:func:`domain_of` classifies a pattern), so a rule
belongs to exactly one domain. Everything here is pure Python and deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import Iterator

DOMAINS = ("random", "repeated", "periodic", "mirrored")
# Bump when the generator's output for a given config changes: it is part of the pool's hash.
GENERATOR_VERSION = 1
# Enumerate every pattern of a domain when the string space is at most this big; sample above.
_ENUMERATE_LIMIT = 200_000


def is_repeated(s: str) -> bool:
    """One character repeated, at least twice."""
    return len(s) >= 2 and len(set(s)) == 1


def smallest_period(s: str) -> int:
    """The smallest p such that s[i] == s[i + p] for every valid i (len(s) if none)."""
    for p in range(1, len(s)):
        if all(s[i] == s[i + p] for i in range(len(s) - p)):
            return p
    return len(s)


def is_periodic(s: str) -> bool:
    """At least two full periods of a base of length >= 2 (``abab``, ``abcabc``)."""
    p = smallest_period(s)
    return p >= 2 and 2 * p <= len(s)


def is_mirrored(s: str) -> bool:
    """A palindrome of length >= 3 that is neither repeated nor periodic (``aba``, ``abba``)."""
    return len(s) >= 3 and s == s[::-1] and not is_repeated(s) and not is_periodic(s)


def domain_of(pattern: str) -> str:
    """The semantic domain a pattern belongs to."""
    if is_repeated(pattern):
        return "repeated"
    if is_periodic(pattern):
        return "periodic"
    if is_mirrored(pattern):
        return "mirrored"
    return "random"


def rewrite(pattern: str, replacement: str, text: str) -> str:
    """Apply the rule once: the leftmost occurrence of pattern is replaced (no-op if absent)."""
    return text.replace(pattern, replacement, 1)


def format_instruction(pattern: str, replacement: str) -> str:
    """The instruction text of a rule, as the model reads it."""
    return f"{pattern}->{replacement}"


@dataclass(frozen=True)
class StringRewriteParams:
    """Parameters of the generator; validated by :class:`search.config.StringRewriteConfig`."""

    alphabet: str
    input_length: int
    pattern_length: tuple[int, int]
    replacement_length: tuple[int, int]
    noop_fraction: float
    domains: tuple[str, ...]
    rules_per_domain: int
    unseen_rules_per_domain: int
    examples_per_rule: int
    unseen_examples_per_rule: int
    seed: int


@dataclass(frozen=True)
class Rule:
    domain: str
    pattern: str
    replacement: str
    split: str  # "train" or "unseen"
    rule_idx: int  # position within (domain, split), in the generator's random order

    @property
    def instruction(self) -> str:
        return format_instruction(self.pattern, self.replacement)

    @property
    def task(self) -> str:
        prefix = "" if self.split == "train" else "unseen-"
        return f"{prefix}{self.domain}-{self.rule_idx:05d}"


def _rng(*parts: object) -> random.Random:
    """A generator seeded from a stable hash of parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _lengths(lo_hi: tuple[int, int]) -> range:
    return range(lo_hi[0], lo_hi[1] + 1)


def domain_patterns(domain: str, alphabet: str, lengths: tuple[int, int]) -> list[str] | None:
    """Every pattern of the domain with a length in range, sorted; None if too many to list."""
    if sum(len(alphabet) ** n for n in _lengths(lengths)) > _ENUMERATE_LIMIT:
        return None
    return sorted(
        "".join(chars)
        for n in _lengths(lengths)
        for chars in itertools.product(alphabet, repeat=n)
        if domain_of("".join(chars)) == domain
    )


def _replacements(alphabet: str, lengths: tuple[int, int]) -> list[str] | None:
    if sum(len(alphabet) ** n for n in _lengths(lengths)) > _ENUMERATE_LIMIT:
        return None
    return sorted(
        "".join(c) for n in _lengths(lengths) for c in itertools.product(alphabet, repeat=n)
    )


def domain_capacity(domain: str, params: StringRewriteParams) -> int | None:
    """How many distinct rules the domain can hold (None: too many to count, effectively unbounded)."""
    patterns = domain_patterns(domain, params.alphabet, params.pattern_length)
    replacements = _replacements(params.alphabet, params.replacement_length)
    if patterns is None or replacements is None:
        return None
    # A rule x -> x rewrites nothing; it is excluded.
    return sum(len(replacements) - (p in replacements) for p in patterns)


def _sample_pattern(domain: str, alphabet: str, lengths: tuple[int, int], rng: random.Random) -> str:
    """Draw one pattern of the domain by construction plus rejection (used for huge spaces)."""
    for _ in range(10_000):
        n = rng.choice(_lengths(lengths))
        if domain == "repeated":
            s = rng.choice(alphabet) * n
        elif domain == "periodic":
            p = rng.randint(2, max(2, n // 2))
            base = "".join(rng.choice(alphabet) for _ in range(p))
            s = (base * n)[:n]
        elif domain == "mirrored":
            half = "".join(rng.choice(alphabet) for _ in range(n // 2))
            s = half + ("".join(rng.choice(alphabet)) if n % 2 else "") + half[::-1]
        else:
            s = "".join(rng.choice(alphabet) for _ in range(n))
        if domain_of(s) == domain:
            return s
    raise ValueError(f"cannot draw a {domain!r} pattern with lengths {lengths} over {alphabet!r}")


def generate_rules(params: StringRewriteParams) -> list[Rule]:
    """All rules of the corpus, train and unseen, distinct across domains and splits.

    Per domain, ``rules_per_domain + unseen_rules_per_domain`` distinct rules are drawn in a
    random order; the first ones become the unseen split, so no unseen rule is ever in the pool.
    """
    rules: list[Rule] = []
    replacements = _replacements(params.alphabet, params.replacement_length)
    for domain in params.domains:
        rng = _rng("rules", params.seed, domain)
        wanted = params.rules_per_domain + params.unseen_rules_per_domain
        patterns = domain_patterns(domain, params.alphabet, params.pattern_length)
        if patterns is not None and replacements is not None:
            every = [(p, r) for p in patterns for r in replacements if r != p]
            if wanted > len(every):
                raise ValueError(
                    f"domain {domain!r} holds {len(every)} distinct rules, {wanted} requested"
                )
            chosen = rng.sample(every, wanted)
        else:
            seen: set[tuple[str, str]] = set()
            chosen = []
            while len(chosen) < wanted:
                p = _sample_pattern(domain, params.alphabet, params.pattern_length, rng)
                r = "".join(
                    rng.choice(params.alphabet)
                    for _ in range(rng.choice(_lengths(params.replacement_length)))
                )
                if r != p and (p, r) not in seen:
                    seen.add((p, r))
                    chosen.append((p, r))
        n_unseen = params.unseen_rules_per_domain
        for i, (p, r) in enumerate(chosen[:n_unseen]):
            rules.append(Rule(domain, p, r, "unseen", i))
        for i, (p, r) in enumerate(chosen[n_unseen:]):
            rules.append(Rule(domain, p, r, "train", i))
    return rules


def _input_without(pattern: str, params: StringRewriteParams, rng: random.Random) -> str:
    for _ in range(10_000):
        z = "".join(rng.choice(params.alphabet) for _ in range(params.input_length))
        if pattern not in z:
            return z
    raise ValueError(f"cannot draw an input of length {params.input_length} without {pattern!r}")


def _input_with(pattern: str, params: StringRewriteParams, rng: random.Random) -> str:
    z = [rng.choice(params.alphabet) for _ in range(params.input_length)]
    at = rng.randint(0, params.input_length - len(pattern))
    z[at : at + len(pattern)] = pattern
    return "".join(z)


def generate_examples(rule: Rule, count: int, params: StringRewriteParams) -> Iterator[dict]:
    """``count`` examples of a rule, as pool rows. Deterministic for (seed, rule).

    A fixed share of them, ``round(noop_fraction * count)``, are no-ops (pattern absent).
    """
    rng = _rng("examples", params.seed, rule.split, rule.domain, rule.rule_idx)
    n_noop = round(params.noop_fraction * count)
    noop_slots = set(rng.sample(range(count), n_noop))
    for j in range(count):
        if j in noop_slots:
            z = _input_without(rule.pattern, params, rng)
        else:
            z = _input_with(rule.pattern, params, rng)
        yield {
            "domain": rule.domain,
            "task": rule.task,
            "rule_idx": rule.rule_idx,
            "example_idx": j,
            "instruction": rule.instruction,
            "input": z,
            "output": rewrite(rule.pattern, rule.replacement, z),
        }
