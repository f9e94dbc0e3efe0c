"""Stage 3, mixture: what one trial trains on, and its materialization from the pool.

A :class:`Mixture` is a typed value: domain weights on the simplex, a number of distinct
instructions, a total example budget and a seed. :func:`materialize` turns it into rows,
deterministically, reading with pyarrow only the partitions (and, within them, the row groups)
of the rules it selects, so its cost grows with the mixture, not with the pool.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from search.pool import Manifest, domain_stats, read_split


@dataclass(frozen=True)
class Mixture:
    """Domain weights (>= 0, summing to 1), distinct instructions, total examples, seed.

    ``skew`` >= 0 shapes each domain's examples over its instructions: the instruction of rank r
    (1-based, in the run :func:`materialize` picks) gets a share proportional to r^-skew, at
    least one example each; 0 spreads them evenly, 1 is Zipf's law.
    """

    weights: dict[str, float]
    num_instructions: int
    budget: int
    seed: int = 0
    skew: float = 0.0

    def __post_init__(self) -> None:
        if not self.weights or any(w < 0 or not math.isfinite(w) for w in self.weights.values()):
            raise ValueError(f"weights must be finite and >= 0, got {self.weights}")
        if abs(sum(self.weights.values()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {sum(self.weights.values())}")
        if self.num_instructions < 1:
            raise ValueError(f"num_instructions must be >= 1, got {self.num_instructions}")
        if not (self.skew >= 0 and math.isfinite(self.skew)):
            raise ValueError(f"skew must be finite and >= 0, got {self.skew}")
        if self.budget < self.num_instructions:
            raise ValueError(
                f"budget ({self.budget}) must be at least num_instructions ({self.num_instructions})"
            )

    @property
    def domains(self) -> list[str]:
        """The domains with positive weight, the only ones the mixture draws from."""
        return [d for d, w in self.weights.items() if w > 0]


def apportion(total: int, weights: dict[str, float], lower: dict[str, int], upper: dict[str, int]) -> dict[str, int]:
    """Integers summing to ``total``, proportional to weights, within [lower, upper] per key.

    Keys whose proportional share falls outside their bounds are pinned to the bound and the rest
    is shared again among the others (water-filling); rounding by largest remainder.
    """
    keys = list(weights)
    if not sum(lower[k] for k in keys) <= total <= sum(upper[k] for k in keys):
        raise ValueError(f"cannot apportion {total} within bounds {lower}..{upper}")
    pinned: dict[str, int] = {}
    free = list(keys)
    while free:
        rest = total - sum(pinned.values())
        wsum = sum(weights[k] for k in free)
        ideal = {k: rest * (weights[k] / wsum if wsum > 0 else 1 / len(free)) for k in free}
        over = [k for k in free if ideal[k] > upper[k]]
        under = [k for k in free if ideal[k] < lower[k]]
        # Pin one side at a time: pinning the over-full raises everyone else's share, pinning the
        # under-full lowers it, so neither step can push a free key across the other bound.
        side, bound = (over, upper) if over else (under, lower)
        if not side:
            break
        for k in side:
            pinned[k] = bound[k]
            free.remove(k)
    else:
        ideal = {}
    out = dict(pinned)
    out.update({k: math.floor(ideal[k]) for k in free})
    left = total - sum(out.values())
    for k in sorted(free, key=lambda k: (-(ideal[k] - math.floor(ideal[k])), keys.index(k)))[:left]:
        out[k] += 1
    # Pinning both sides in turn can leave a small residue when every key ends up pinned.
    for k in keys:
        while sum(out.values()) < total and out[k] < upper[k]:
            out[k] += 1
        while sum(out.values()) > total and out[k] > lower[k]:
            out[k] -= 1
    return {k: out[k] for k in keys}


def skewed_counts(total: int, k: int, skew: float) -> list[int]:
    """``total`` examples over ``k`` instructions by rank: one each, the rest ~ r^-skew.

    Largest remainder rounding, ties to the lower rank: with skew 0 the first ``total % k``
    instructions get one example more than the others.
    """
    if k < 1 or total < k:
        raise ValueError(f"cannot give {total} examples to {k} instructions, one each at least")
    shares = [(r + 1) ** -skew for r in range(k)]
    scale = (total - k) / sum(shares)
    ideal = [s * scale for s in shares]
    counts = [1 + math.floor(x) for x in ideal]
    left = total - sum(counts)
    for r in sorted(range(k), key=lambda r: (-(ideal[r] - math.floor(ideal[r])), r))[:left]:
        counts[r] += 1
    return counts


def _offset(seed: int, domain: str, n_rules: int) -> int:
    digest = hashlib.sha256(f"mixture/{seed}/{domain}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n_rules


@dataclass(frozen=True)
class Plan:
    """How many instructions and examples each domain contributes."""

    instructions: dict[str, int]
    examples: dict[str, int]


def plan(mixture: Mixture, manifest: Manifest) -> Plan:
    """Apportion instructions and examples over the domains with positive weight."""
    domains = mixture.domains
    missing = [d for d in domains if d not in manifest.train]
    if missing:
        raise ValueError(f"domains {missing} are not in the pool (it has {manifest.domains})")
    weights = {d: mixture.weights[d] for d in domains}
    rules = manifest.rules()
    available = sum(rules[d] for d in domains)
    if mixture.num_instructions > available:
        raise ValueError(
            f"{mixture.num_instructions} distinct instructions asked; the weighted domains hold {available}"
        )
    # A domain gets no more instructions than it holds; overflow goes to the other domains.
    inst = apportion(mixture.num_instructions, weights, {d: 0 for d in domains}, {d: rules[d] for d in domains})
    used = {d: w for d, w in weights.items() if inst[d] > 0}
    # Every chosen instruction needs at least one example; a domain with instructions but no
    # examples would make the distinct-instruction count a lie.
    ex = apportion(mixture.budget, used, {d: inst[d] for d in used}, {d: mixture.budget for d in used})
    return Plan(instructions={d: inst[d] for d in used}, examples=ex)


def materialize(pool: Path, mixture: Mixture, manifest: Manifest | None = None) -> pa.Table:
    """The training rows of a mixture: ``budget`` rows over exactly ``num_instructions`` rules.

    Per domain, the rules are a contiguous run (modulo the domain's size) of rule ids starting at
    a seed-derived offset; rule ids are in random order, so the run is a random subset, and
    mixtures with more instructions contain those with fewer (same seed). Examples are spread
    over a domain's rules, evenly by default or by rank with ``skew`` (:func:`skewed_counts`),
    cycling through a rule's examples if more are needed than the pool holds. Rows come back
    shuffled by the seed.
    """
    manifest = manifest or Manifest.load(pool)
    p = plan(mixture, manifest)
    epr = manifest.examples_per_rule
    parts = []
    for domain, k in p.instructions.items():
        n_rules = manifest.train[domain].instructions
        start = _offset(mixture.seed, domain, n_rules)
        end = start + k
        counts = skewed_counts(p.examples[domain], k, mixture.skew)
        need = min(epr, max(counts))
        rid = pc.field("rule_idx")
        in_run = (rid >= start) & (rid < end)
        if end > n_rules:
            in_run = in_run | (rid < end - n_rules)
        table = read_split(pool, "train", domain, filter=in_run & (pc.field("example_idx") < need))
        # Rows are sorted by (rule_idx, example_idx): find each rule's block, then cycle within it.
        # A rule's rank is its position in the run, which wraps around the domain's rule ids.
        rule_ids = table["rule_idx"].to_numpy()
        take = []
        for lo, hi in _block_bounds(rule_ids):
            c = counts[int((rule_ids[lo] - start) % n_rules)]
            take.extend(lo + (j % (hi - lo)) for j in range(c))
        parts.append(table.take(pa.array(take, pa.int64())))
    rows = pa.concat_tables(parts)
    order = _permutation(rows.num_rows, mixture.seed)
    return rows.take(pa.array(order, pa.int64()))


def _block_bounds(sorted_ids) -> list[tuple[int, int]]:
    bounds, lo = [], 0
    for i in range(1, len(sorted_ids) + 1):
        if i == len(sorted_ids) or sorted_ids[i] != sorted_ids[lo]:
            bounds.append((lo, i))
            lo = i
    return bounds


def _permutation(n: int, seed: int) -> list[int]:
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def describe(rows: pa.Table) -> dict[str, dict[str, int]]:
    """Per domain: rows and distinct instructions of a materialized mixture."""
    return {d: asdict(stats) for d, stats in domain_stats(rows).items()}
