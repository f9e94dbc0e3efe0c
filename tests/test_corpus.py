import pytest

from search import corpus
from search.config import StringRewriteConfig


def params(**kw):
    return StringRewriteConfig(**{"rules_per_domain": 40, "unseen_rules_per_domain": 10, "examples_per_rule": 20, **kw}).params()


def test_rules_and_examples_are_deterministic_for_a_seed():
    p = params()
    a, b = corpus.generate_rules(p), corpus.generate_rules(p)
    assert a == b
    assert list(corpus.generate_examples(a[0], 20, p)) == list(corpus.generate_examples(b[0], 20, p))
    other = corpus.generate_rules(params(seed=1))
    assert {r.instruction for r in other} != {r.instruction for r in a}


@pytest.mark.parametrize(
    "domain, check",
    [
        ("repeated", lambda s: len(set(s)) == 1 and len(s) >= 2),
        ("periodic", lambda s: any(len(s) >= 2 * q and len(set(s[:q])) > 1 and all(s[i] == s[i % q] for i in range(len(s))) for q in range(2, len(s)))),
        ("mirrored", lambda s: s == s[::-1] and len(set(s)) > 1),
        ("random", lambda s: corpus.domain_of(s) == "random"),
    ],
)
def test_each_domain_has_its_pattern_property(domain, check):
    rules = [r for r in corpus.generate_rules(params()) if r.domain == domain]
    assert len(rules) == 50
    for r in rules:
        assert check(r.pattern), r.pattern
        assert corpus.domain_of(r.pattern) == domain


def test_rules_are_distinct_and_unseen_never_in_train():
    rules = corpus.generate_rules(params())
    assert len({r.instruction for r in rules}) == len(rules)
    train = {r.instruction for r in rules if r.split == "train"}
    unseen = {r.instruction for r in rules if r.split == "unseen"}
    assert len(train) == 4 * 40 and len(unseen) == 4 * 10 and not train & unseen


def test_examples_apply_the_leftmost_rewrite_with_the_asked_noop_share():
    p = params(noop_fraction=0.25)
    for rule in corpus.generate_rules(p)[:30]:
        rows = list(corpus.generate_examples(rule, 20, p))
        noops = [r for r in rows if rule.pattern not in r["input"]]
        assert len(noops) == 5
        for r in rows:
            assert len(r["input"]) == p.input_length
            i = r["input"].find(rule.pattern)
            expected = r["input"] if i < 0 else r["input"][:i] + rule.replacement + r["input"][i + len(rule.pattern):]
            assert r["output"] == expected


def test_rewrite_examples_from_the_paper():
    assert corpus.rewrite("aa", "bac", "caaba") == "cbacba"
    assert corpus.rewrite("iss", "art", "mississippi") == "martissippi"
    assert corpus.rewrite("zz", "q", "abc") == "abc"


def test_domain_capacity_matches_the_generator():
    p = params(alphabet="abc", pattern_length=(2, 2), replacement_length=(1, 1), rules_per_domain=1,
               unseen_rules_per_domain=1, domains=["repeated"])
    # length-2 repeated patterns over abc: aa, bb, cc; replacements a, b, c (none equal a pattern)
    assert corpus.domain_capacity("repeated", p) == 9
    with pytest.raises(ValueError, match="holds 9 distinct rules"):
        corpus.generate_rules(params(alphabet="abc", pattern_length=(2, 2), replacement_length=(1, 1),
                                     rules_per_domain=9, unseen_rules_per_domain=1, domains=["repeated"]))
