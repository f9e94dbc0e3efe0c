"""Property-based: malformed configs and corpus parameters end in a clear error, never a traceback."""

import copy
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search import corpus
from search.config import DEFAULT_CONFIG, ConfigError, StringRewriteConfig, load_config

DEFAULT = yaml.safe_load(DEFAULT_CONFIG.read_text())


def key_paths(node, prefix=()):
    """Every key path of the default config, leaves and branches."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from key_paths(v, prefix + (k,))


PATHS = sorted(set(key_paths(DEFAULT)))
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def mutate(data, path, action, value):
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    if action == "set":
        node[path[-1]] = value
    elif action == "delete":
        del node[path[-1]]
    else:  # a key the schema does not know, beside this one
        node[f"{path[-1]}_typo"] = value
    return data


def check(tmp_path, text: str) -> None:
    config = tmp_path / "fuzz.yaml"
    config.write_text(text, encoding="utf-8")
    before = set(os.listdir(tmp_path))
    try:
        load_config(config)
    except ConfigError as e:
        assert str(config) in str(e)  # the error says which file
    assert set(os.listdir(tmp_path)) == before  # validation writes nothing


_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(path=st.sampled_from(PATHS), action=st.sampled_from(["set", "delete", "extra"]), value=junk)
def test_mutated_configs_load_or_fail_clearly(tmp_path, path, action, value):
    check(tmp_path, yaml.safe_dump(mutate(DEFAULT, path, action, value), allow_unicode=True))


@_settings
@given(text=st.text(max_size=200))
def test_arbitrary_text_loads_or_fails_clearly(tmp_path, text):
    check(tmp_path, text)


@settings(max_examples=60, deadline=None)
@given(
    alphabet=st.text(alphabet="abcdefgh0123", min_size=1, max_size=5),
    input_length=st.integers(1, 12),
    pattern=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    replacement=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    domains=st.lists(st.sampled_from(corpus.DOMAINS), min_size=0, max_size=4),
    rules=st.integers(0, 40),
    unseen=st.integers(0, 10),
    noop=st.floats(-0.5, 1.5),
)
def test_corpus_parameters_the_validator_accepts_always_generate(alphabet, input_length, pattern, replacement,
                                                                 domains, rules, unseen, noop):
    try:
        cfg = StringRewriteConfig(alphabet=alphabet, input_length=input_length, pattern_length=pattern,
                                  replacement_length=replacement, domains=domains, rules_per_domain=rules,
                                  unseen_rules_per_domain=unseen, noop_fraction=noop, examples_per_rule=3)
    except ValueError:
        return  # refused up front (pydantic's ValidationError is a ValueError): fine
    params = cfg.params()
    rules_out = corpus.generate_rules(params)
    assert len(rules_out) == len(cfg.domains) * (rules + unseen)
    for rule in rules_out[:20]:
        rows = list(corpus.generate_examples(rule, 3, params))
        assert all(r["output"] == corpus.rewrite(rule.pattern, rule.replacement, r["input"]) for r in rows)


def test_secrets_come_from_the_environment_and_are_redacted_in_logs(monkeypatch):
    from search.study import expand_secrets, redact

    monkeypatch.setenv("PGPASSWORD", "s3cr3t")
    url = expand_secrets("postgresql://mix:${PGPASSWORD}@db.internal:5432/optuna")
    assert url == "postgresql://mix:s3cr3t@db.internal:5432/optuna"
    assert redact(url) == "postgresql://mix:***@db.internal:5432/optuna" and "s3cr3t" not in redact(url)
    assert redact("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    monkeypatch.delenv("PGPASSWORD")
    try:
        expand_secrets("postgresql://mix:${PGPASSWORD}@db/optuna")
    except ConfigError as e:
        assert "PGPASSWORD" in str(e) and "s3cr3t" not in str(e)
    else:
        raise AssertionError("a missing variable must be an error")


def test_the_pickled_study_storage_holds_the_template_not_the_secret(tmp_path, monkeypatch):
    import pickle

    import optuna

    from search.study import study_storage

    secret = tmp_path / "s3cr3t-7f2a"
    secret.mkdir()
    monkeypatch.setenv("STUDY_DIR", str(secret))
    storage = study_storage("sqlite:///${STUDY_DIR}/study.db", str(tmp_path / "exp"))
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    blob = pickle.dumps(storage)  # what Tune writes into the experiment folder
    assert b"s3cr3t-7f2a" not in blob and b"${STUDY_DIR}" in blob
    restored = pickle.loads(blob)  # on --resume, with the variable set again
    assert len(optuna.load_study(study_name="s", storage=restored).trials) == 2
