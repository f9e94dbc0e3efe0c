"""The experiment config: YAML, validated before any cluster work starts.

Every error names the file, the line and the key (``search.space.num_instructions.high``), so a
typo is caught on the laptop, not twenty minutes into a cluster run.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag,
                      ValidationError, field_validator, model_validator)

from search import corpus

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


class ConfigError(ValueError):
    """A config that cannot be run; the message says which file, line and key."""


def not_empty(path: str) -> str:
    """``path`` unchanged, or ValueError if it is empty or blank. pathlib reads "" as the working
    directory, so `--storage-path "$RESULTS"` with RESULTS unset would write there without a word."""
    if not path.strip():
        raise ValueError("an empty path: write one out ('.' for the working directory)")
    return path


def _checked_path(path: str) -> str:
    not_empty(path)
    # "$SCRATCH/results" would quietly become a folder named "$SCRATCH" in the working directory.
    found = re.search(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", path)
    if found:
        raise ValueError(f"{found.group()}: environment variables are not expanded in paths (only ~ is); "
                         "write the path out")
    return path


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a duration such as ``90m``, ``2h`` or ``1h30m``
    (units d, h, m, s); ValueError if it is neither or not above zero."""
    if isinstance(value, bool):  # YAML's yes/no: not a duration
        raise ValueError(f"{value!r} is not a duration")
    text = str(value).strip().lower().replace(" ", "")
    if isinstance(value, (int, float)) or re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif re.fullmatch(r"(\d+(\.\d+)?[dhms])+", text):
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", text))
    else:
        raise ValueError(f"{value!r} is not a duration: write seconds (5400) or one like 90m, 2h, 1h30m")
    if not seconds > 0:
        raise ValueError(f"{value!r}: a time limit must be above zero (null for none)")
    return seconds


def duration_text(seconds: float) -> str:
    """``2 h``, ``1 h 30 min``, ``45 s``: a duration as people write it."""
    s = round(seconds)
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "min"), (s % 60, "s")]
    return " ".join(f"{n} {u}" for n, u in parts if n) or f"{seconds:g} s"


# Seconds in the model; a number or "2h", "1h30m" in YAML and on the command line.
Duration = Annotated[float, BeforeValidator(parse_duration)]


# A local path or URI in the config: "~" is expanded where it is used; environment variables and "" are refused.
PathStr = Annotated[str, AfterValidator(_checked_path)]


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt key silently falling back to a default is the worst bug.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StringRewriteConfig(_Strict):
    """Parameters of the built-in string-rewrite corpus (see :mod:`search.corpus`)."""

    alphabet: str = "abcdef"
    input_length: int = Field(8, ge=1, le=200)
    pattern_length: tuple[int, int] = (2, 4)
    replacement_length: tuple[int, int] = (1, 2)
    noop_fraction: float = Field(0.3, ge=0.0, le=1.0)
    domains: list[Literal["random", "repeated", "periodic", "mirrored"]] = list(corpus.DOMAINS)
    rules_per_domain: int = Field(500, ge=1)
    unseen_rules_per_domain: int = Field(50, ge=1)
    examples_per_rule: int = Field(40, ge=1)
    unseen_examples_per_rule: int = Field(10, ge=1)
    seed: int = 0

    @field_validator("alphabet")
    @classmethod
    def _alphabet(cls, v: str) -> str:
        if len(v) < 2 or len(set(v)) != len(v) or not v.isalnum() or not v.isascii():
            raise ValueError("must be at least 2 distinct ASCII letters or digits")
        return v

    @field_validator("pattern_length", "replacement_length")
    @classmethod
    def _length_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"must be [min, max] with 1 <= min <= max, got {list(v)}")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must list at least one domain, each once")
        return v

    @model_validator(mode="after")
    def _fits(self) -> "StringRewriteConfig":
        if self.pattern_length[1] > self.input_length:
            raise ValueError(
                f"pattern_length max {self.pattern_length[1]} exceeds input_length {self.input_length}"
            )
        params = self.params()
        wanted = self.rules_per_domain + self.unseen_rules_per_domain
        for d in self.domains:
            cap = corpus.domain_capacity(d, params)
            if cap is not None and cap < wanted:
                raise ValueError(
                    f"domain {d!r} holds {cap} distinct rules with this alphabet and these "
                    f"lengths; rules_per_domain + unseen_rules_per_domain = {wanted}"
                )
        return self

    def params(self) -> corpus.StringRewriteParams:
        return corpus.StringRewriteParams(
            **{**self.model_dump(), "domains": tuple(self.domains)}
        )


class Columns(_Strict):
    """Which column of the files holds what. Left at its default, ``domain`` falls back to
    ``category`` when the files have no ``domain`` column, ``messages`` to ``conversations``, and
    without a ``task`` column a task is a distinct normalized instruction; a column named here must
    be in the files. A row without the instruction column is read from its ``messages`` column
    when it has one: a chat of one user turn and one assistant answer. The output may be a list of
    references: the row trains on the first, and an unseen row is scored against each."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    domain: str = "domain"
    task: str = "task"
    messages: str = "messages"


class Domains(_Strict):
    """Domains from the domain column, or, with ``clusters: k``, from clustering the instructions
    (TF-IDF + k-means) when the corpus has no labels."""

    clusters: Optional[int] = Field(None, ge=2, description="k: derive k domains by clustering")


class Unseen(_Strict):
    """Which tasks are held out as unseen: a fraction of each domain's tasks, named tasks (inline
    or a file with one per line), or whole domains. Held out by task, never by row."""

    fraction: Optional[float] = Field(None, gt=0.0, lt=1.0)
    tasks: Optional[list[str]] = None
    tasks_file: Optional[PathStr] = None
    domains: Optional[list[str]] = None

    @model_validator(mode="after")
    def _one_rule(self) -> "Unseen":
        given = [k for k in ("fraction", "tasks", "tasks_file", "domains") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of fraction, tasks, tasks_file, domains (got {given or 'none'})")
        return self


# As a files corpus's prompt: the pretrained model's own chat template (trainables.tokenizer).
CHAT_PROMPT = "chat"


class FilesConfig(_Strict):
    """Instruction data from files: JSONL, JSON arrays, Parquet, CSV (globs and several files), or
    a folder: one saved by Hugging Face ``datasets`` (``save_to_disk``), or a folder of data files
    such as a Hub download. Of a folder that holds several splits, ``split`` is read."""

    paths: list[PathStr] = Field(min_length=1)
    split: str = Field("train", pattern=r"^\w+(\.\w+)*$",
                       description="the split read from a folder that holds several, or that a saved Dataset must be "
                                   "(files listed or globbed are read whole)")
    columns: Columns = Columns()
    domains: Domains = Domains()
    unseen: Unseen
    strict: bool = Field(False, description="a bad row is an error instead of a counted skip")
    prompt: str = Field("{instruction}\n{input}\n", description="how instruction and input make the prompt; "
                        "chat: the pretrained model's chat template, with them as one user turn")
    truncate: bool = Field(False, description="cut rows longer than model.max_length instead of dropping them")
    seed: int = 0

    @field_validator("prompt")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format(instruction="", input="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"the prompt may use {{instruction}} and {{input}} only: {e}") from None
        return v


class CorpusConfig(_Strict):
    source: Literal["string_rewrite", "files"] = "string_rewrite"
    pool_dir: PathStr = "./mixsearch_pools"
    string_rewrite: StringRewriteConfig = StringRewriteConfig()
    files: Optional[FilesConfig] = None

    @model_validator(mode="after")
    def _files_given(self) -> "CorpusConfig":
        if self.source == "files" and self.files is None:
            raise ValueError("source: files needs a files section (paths, unseen)")
        return self


class TinyModel(_Strict):
    """A GPT-2 built from a config and trained from scratch, with a character tokenizer."""

    family: Literal["gpt2"] = "gpt2"
    n_layer: int = Field(2, ge=1)
    n_embd: int = Field(96, ge=8)
    n_head: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _heads(self) -> "TinyModel":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class LoraConfig(_Strict):
    """Low-rank adapters (peft); the base model stays frozen."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"


class ModelConfig(_Strict):
    """Either ``tiny`` (built from a config) or ``pretrained`` (a local directory or a hub id)."""

    tiny: TinyModel | None = None
    pretrained: PathStr | None = Field(None, description="a local directory or a hub id")
    trust_remote_code: bool = False  # off unless asked: it runs code shipped with the model
    max_length: int = Field(64, ge=8, description="longest sequence, prompt and answer")
    lora: LoraConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if self.tiny is not None and self.pretrained is not None:
            raise ValueError("give either tiny or pretrained, not both")
        if self.tiny is None and self.pretrained is None:
            object.__setattr__(self, "tiny", TinyModel())
        return self

    @field_validator("pretrained")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is None:
            return v
        path = Path(os.path.expanduser(v))
        looks_local = v.startswith((".", "/", "~")) or path.exists()
        if looks_local:
            if not (path / "config.json").is_file():
                raise ValueError(f"{v}: not a model directory (no config.json); save one with save_pretrained")
            return str(path.resolve())
        return v


class TrainingConfig(_Strict):
    epochs: int = Field(8, ge=1, description="also the maximum fidelity of the scheduler")
    batch_size: int = Field(64, ge=1, description="rows per optimizer step, across accumulation")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_fraction: float = Field(0.3, ge=0.01, le=0.99, description="share of steps the one-cycle schedule warms up")
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPUs that support it
    metric: Literal["exact_match", "normalized_exact_match", "rouge_l"] = "exact_match"
    eval_examples: int = Field(1000, ge=1, description="unseen examples scored after each epoch")
    eval_batch_size: int = Field(256, ge=1)
    max_new_tokens: Optional[int] = Field(
        None, ge=1, description="tokens generated per answer for the text metrics; null: twice the "
        "longest reference answer scored (end-of-sequence included)",
    )
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")

    @model_validator(mode="after")
    def _accum(self) -> "TrainingConfig":
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum_steps ({self.grad_accum_steps})")
        return self


class Resources(_Strict):
    """What one trial asks of Ray; fractions share a device between trials."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class Range(_Strict):
    """A searched number: ``{low: 1e-3, high: 1e-2, log: true}``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self) -> "Range":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Simplex(_Strict):
    """Domain weights searched on the simplex over the listed domains, or over every domain of
    the pool (``all``, the default: a file corpus's domains, clustered ones included, are known
    only once it is prepared; see :func:`with_pool_domains`).

    ``min_weight``: every kept domain gets at least this much (uniform over what remains);
    ``dropout``: the search may also leave domains out entirely (at least one is kept).
    """

    simplex: Union[list[str], Literal["all"]] = Field(min_length=1)
    min_weight: float = Field(0.0, ge=0.0, lt=1.0)
    dropout: bool = False

    @model_validator(mode="after")
    def _room(self) -> "Simplex":
        if self.simplex != "all" and self.min_weight * len(self.simplex) > 1:
            raise ValueError(
                f"min_weight {self.min_weight} x {len(self.simplex)} domains exceeds 1"
            )
        return self


class Choices(_Strict):
    """A knob taking one of listed values: categorical for TPE, an axis for a grid."""

    choices: list[float] = Field(min_length=1)


class WeightChoices(_Strict):
    """Domain weights taking one of listed mixtures (each >= 0, summing to 1)."""

    choices: list[dict[str, float]] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _each(cls, v: list[dict[str, float]]) -> list[dict[str, float]]:
        for w in v:
            if not w or any(x < 0 for x in w.values()) or abs(sum(w.values()) - 1) > 1e-6:
                raise ValueError(f"each mixture must be >= 0 and sum to 1, got {w}")
        return v


def _number_form(value: Any) -> str:
    """Which form a searched number takes, read from its keys: choosing the union's branch up
    front makes an error speak of the form the user wrote (a range with low above high is reported
    as that, not also as "not a number" and "choices missing"). Tags are capitalized so that error
    locations drop them, like pydantic's own class names."""
    if isinstance(value, Choices) or isinstance(value, dict) and "choices" in value:
        return "Choices"
    return "Range" if isinstance(value, (Range, dict)) else "Fixed"  # any other mapping: a bad range


Number = Annotated[
    Union[Annotated[float, Tag("Fixed")], Annotated[Range, Tag("Range")],
          Annotated[Choices, Tag("Choices")]],
    Discriminator(_number_form),
]


def _number_text(n: Number) -> str:
    if isinstance(n, Range):
        return f"{'log-uniform' if n.log else 'uniform'} in [{n.low:g}, {n.high:g}]"
    if isinstance(n, Choices):
        return "one of " + ", ".join(f"{c:g}" for c in n.choices)
    return f"{n:g} (fixed)"


def _mixture_text(weights: dict[str, float]) -> str:
    return "{" + ", ".join(f"{d}: {x:g}" for d, x in weights.items()) + "}"


def _most(n: Number) -> float:
    return n.high if isinstance(n, Range) else max(n.choices) if isinstance(n, Choices) else n


def _least(n: Number) -> float:
    return n.low if isinstance(n, Range) else min(n.choices) if isinstance(n, Choices) else n


def _weights_form(value: Any) -> str:
    """Which form domain weights take (see ``_number_form``); a number is "not a mapping"."""
    if isinstance(value, Simplex) or isinstance(value, dict) and "simplex" in value:
        return "Simplex"
    if isinstance(value, WeightChoices) or isinstance(value, dict) and "choices" in value:
        return "Choices"
    return "Mapping"


Weights = Annotated[
    Union[Annotated[Simplex, Tag("Simplex")], Annotated[WeightChoices, Tag("Choices")],
          Annotated[dict[str, float], Tag("Mapping")]],
    Discriminator(_weights_form),
]


class SpaceConfig(_Strict):
    """What the search varies; a plain number fixes a knob, a range searches it.

    Diversity is either ``num_instructions`` (distinct instructions) or ``examples_per_instruction``
    (then ``num_instructions = budget // examples_per_instruction``): give one of them.
    ``skew`` shapes how the budget is shared among a domain's instructions: instruction of rank r
    gets a share proportional to r^-skew (0: even; 1: Zipf). ``weight_decay`` and
    ``warmup_fraction`` default to the training section's values.
    """

    weights: Weights = Simplex(simplex="all")
    num_instructions: Optional[Number] = Range(low=8, high=2000, log=True)
    examples_per_instruction: Optional[Number] = None
    budget: Number = 20000
    skew: Number = 0.0
    learning_rate: Number = Range(low=1e-3, high=6e-3, log=True)
    weight_decay: Optional[Number] = None
    warmup_fraction: Optional[Number] = None

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: Simplex | WeightChoices | dict[str, float]) -> Simplex | WeightChoices | dict[str, float]:
        if isinstance(v, WeightChoices):
            return v
        if isinstance(v, dict):
            if not v or any(w < 0 for w in v.values()) or abs(sum(v.values()) - 1) > 1e-6:
                raise ValueError(f"fixed weights must be >= 0 and sum to 1, got {v}")
        elif v.simplex != "all" and len(set(v.simplex)) != len(v.simplex):
            raise ValueError("simplex lists a domain twice")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_yields(cls, data: Any) -> Any:
        # examples_per_instruction given, num_instructions not: the default range yields to it.
        if isinstance(data, dict) and data.get("examples_per_instruction") is not None and "num_instructions" not in data:
            data = {**data, "num_instructions": None}
        return data

    @model_validator(mode="after")
    def _one_diversity_knob(self) -> "SpaceConfig":
        if self.examples_per_instruction is not None and self.num_instructions is not None:
            raise ValueError("give num_instructions or examples_per_instruction, not both "
                             "(the other follows from the budget)")
        if self.examples_per_instruction is None and self.num_instructions is None:
            raise ValueError("give num_instructions or examples_per_instruction")
        for key, low, high in (("examples_per_instruction", 1, None), ("skew", 0, None),
                               ("weight_decay", 0, None), ("warmup_fraction", 0.01, 0.99)):
            spec = getattr(self, key)
            if spec is not None and (_least(spec) < low or (high is not None and _most(spec) > high)):
                raise ValueError(f"{key} must be within [{low}, {high if high is not None else 'inf'}]")
        return self

    def knobs(self) -> dict[str, "Number"]:
        """The numeric knobs that are set, by name (weights aside)."""
        names = ("num_instructions", "examples_per_instruction", "budget", "skew",
                 "learning_rate", "weight_decay", "warmup_fraction")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def describe(self) -> list[str]:
        """One line per knob: what the search varies and how, and what it fixes."""
        w = self.weights
        if isinstance(w, Simplex):
            over = "the pool's domains" if w.simplex == "all" else ", ".join(w.simplex)
            weights = (f"uniform on the simplex over {over}"
                       + (f", each kept domain at least {w.min_weight:g}" if w.min_weight else "")
                       + (", domains may drop out" if w.dropout else ""))
        elif isinstance(w, WeightChoices):
            weights = f"one of {len(w.choices)}: " + "; ".join(_mixture_text(m) for m in w.choices)
        else:
            weights = f"{_mixture_text(w)} (fixed)"
        lines = [f"weights: {weights}"]
        lines += [f"{k}: {_number_text(v)}" for k, v in self.knobs().items()]
        if self.examples_per_instruction is not None:
            lines.append("num_instructions: budget // examples_per_instruction")
        return lines

    def grid_points(self) -> int:
        """How many combinations a grid over this space runs (ranges count as one: a grid refuses them)."""
        n = len(self.weights.choices) if isinstance(self.weights, WeightChoices) else 1
        for spec in self.knobs().values():
            n *= len(spec.choices) if isinstance(spec, Choices) else 1
        return n

    def most_instructions(self) -> float:
        """The largest number of distinct instructions a trial of this space can ask for."""
        if self.num_instructions is not None:
            return _most(self.num_instructions)
        return _most(self.budget) // _least(self.examples_per_instruction)

    def weight_domains(self) -> list[str]:
        if isinstance(self.weights, Simplex):
            if self.weights.simplex == "all":
                raise ValueError("{simplex: all} names the pool's domains: resolve it with with_pool_domains")
            return list(self.weights.simplex)
        if isinstance(self.weights, WeightChoices):
            return sorted({d for w in self.weights.choices for d in w})
        return list(self.weights)


# Knobs that are whole numbers.
INTEGER_KNOBS = {"num_instructions", "examples_per_instruction", "budget"}


class SearchConfig(_Strict):
    algorithm: Literal["tpe", "grid"] = "tpe"  # grid: every combination of the choices, once
    num_samples: int = Field(12, ge=1, description="trials (tpe); ignored by grid")
    max_concurrent: int = Field(2, ge=1)
    grace_period: int = Field(2, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(3, gt=1)
    stop_by: Literal["unseen_loss", "unseen_accuracy"] = Field(
        "unseen_loss", description="what ASHA ranks trials by at its rungs: the unseen split's loss per answer "
        "token (lower is better) or unseen_accuracy; the search's objective stays unseen_accuracy"
    )
    max_failures: int = Field(2, ge=0, description="retries of a trial that raises, from its last checkpoint")
    study_storage: str | None = Field(
        None, description="a database URL for the Optuna study; null: a journal file beside the experiment"
    )
    seed: int = 0
    pareto: Optional[Literal["budget", "compute"]] = Field(
        None, description="search the front of unseen accuracy against the data budget or the examples trained"
    )
    start_from: Optional[PathStr] = Field(
        None, description="a previous experiment (folder or summary.json): its surrogate's proposals are tried first"
    )
    time_limit: Optional[Duration] = Field(
        None, description="stop the search after this long (seconds, or 90m, 2h, 1h30m), every run of the "
        "experiment counted: trials running then end where they are; null: no limit"
    )
    space: SpaceConfig = SpaceConfig()


class RayConfig(_Strict):
    address: str | None = Field(None, description="an existing cluster; null starts a local one")
    num_cpus: int | None = Field(None, ge=1, description="local cluster size; null = all cores")


def is_uri(path: str) -> bool:
    """``s3://bucket/x``, ``gs://...``, ``file:///...``: storage that pyarrow reaches by URI."""
    return "://" in path


class Config(_Strict):
    name: str = "default"
    storage_path: PathStr = "./mixsearch_results"
    seed: int = 0
    corpus: CorpusConfig = CorpusConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    resources_per_trial: Resources = Resources()
    search: SearchConfig = SearchConfig()
    ray: RayConfig = RayConfig()
    # Keys set on the command line ("storage_path" -> "--storage-path x"), so that a check made
    # after loading blames the flag, not the file's line (see setting_location).
    _cli: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, name: str) -> str:
        # The experiment's folder, <storage_path>/<name>: "." or ".." would write into
        # storage_path itself or its parent, past the check that refuses an existing experiment.
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise ValueError(f"{name!r} is not a folder name: letters, digits, '_', '.' and '-', "
                             "starting with a letter, digit or '_'")
        return name

    @model_validator(mode="after")
    def _grid_is_discrete(self) -> "Config":
        if self.search.algorithm == "grid":
            space = self.search.space
            ranged = [k for k, v in space.knobs().items() if isinstance(v, Range)]
            ranged += ["weights"] if isinstance(space.weights, Simplex) else []
            if ranged:
                raise ValueError(f"a grid takes fixed values or {{choices: [...]}}, not ranges: {ranged}")
        return self

    @model_validator(mode="after")
    def _start_from_tpe(self) -> "Config":
        if self.search.start_from and self.search.algorithm != "tpe":
            raise ValueError("search.start_from seeds a TPE search; a grid runs its own points")
        return self

    @model_validator(mode="after")
    def _study_beside_results(self) -> "Config":
        if is_uri(self.storage_path) and self.search.study_storage is None:
            raise ValueError(
                "storage_path is a URI, where no journal file can live: give search.study_storage "
                "a database URL (postgresql://..., mysql://..., or sqlite:/// on a shared disk)"
            )
        return self


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key on path that exists (of a missing key, its parent's, where
    it belongs, not the parent's first child's)."""
    line = None
    for key in path:
        if node is None:
            break
        if line is None:  # the document's first line, for a missing top-level key
            line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(key)]
            node, line = (match[0][1], match[0][0].start_mark.line + 1) if match else (None, line)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1  # the item's own line, not its list's key's
        else:
            node = None
    return line


def _where(source: str, root: yaml.Node | None, loc: tuple[Any, ...], cli: dict[str, str] | None = None) -> str:
    # pydantic reports union branches as extra path items ("Simplex", "float",
    # "function-after[_order(), Range]"); drop them.
    tags = ("float", "int", "str", "bool")
    path = tuple(p for p in loc if isinstance(p, int)
                 or not (str(p)[:1].isupper() or "[" in str(p) or "(" in str(p) or p in tags))
    key = ".".join(str(p) for p in path) or "(top level)"
    if cli and key in cli:  # the file's line would point at a value the run does not use
        return f"command line {cli[key]}, key {key}"
    line = _line_of(root, path)
    at = f"{source}, line {line}" if line else source
    return f"{at}, key {key}"


def key_location(source: str, key: tuple[str, ...], cli: dict[str, str] | None = None) -> str:
    """``file, line N, key a.b`` of a key of a config file, for checks made after it loaded
    (``command line --flag value, key a.b`` when ``cli`` says a flag set it)."""
    return _where(source, _compose(source), key, cli)


def _compose(source: str) -> yaml.Node | None:
    """The YAML tree of a config file, for the lines of its keys (None if it cannot be read)."""
    try:
        return yaml.compose(Path(source).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def setting_location(cfg: Config, source: str, key: tuple[str, ...]) -> str:
    """Where a setting of ``cfg`` came from: its command-line flag, or its file, line and key."""
    return key_location(source, key, cfg._cli)


_FORMS = {
    "Fixed": "a knob is a number, {low: .., high: .., log: ..} or {choices: [..]}",
    "Mapping": "weights are {domain: weight, ..}, {simplex: [domains]} or {choices: [mixtures]}",
}


def _format(err: ValidationError, source: str, root: yaml.Node | None, cli: dict[str, str]) -> str:
    seen, lines = set(), []
    for e in err.errors():
        where = _where(source, root, e["loc"], cli)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["loc"][-1:] in (("Fixed",), ("Mapping",)):  # the value has none of the allowed forms
            msg += f" ({_FORMS[e['loc'][-1]]})"
        if (where, msg) not in seen:
            seen.add((where, msg))
            lines.append(f"{where}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def check_space_against_pool(cfg: Config, pool_rules: dict[str, int], source: str, root=None) -> None:
    """Impossible searches: weights for domains the pool lacks, more instructions than it holds."""
    space = cfg.search.space
    root = root if root is not None else _compose(source)  # checked against a prepared pool: read the lines
    key = ("search", "space", "weights") + (("simplex",) if isinstance(space.weights, Simplex) else ())
    missing = [d for d in space.weight_domains() if d not in pool_rules]
    if missing:
        raise ConfigError(
            f"{_where(source, root, key)}: domains {missing} are not in the pool "
            f"(it has {sorted(pool_rules)})"
        )
    if isinstance(space.weights, dict):
        usable = sum(pool_rules[d] for d, w in space.weights.items() if w > 0)
    elif isinstance(space.weights, WeightChoices):  # the poorest listed mixture must suffice
        usable = min(sum(pool_rules[d] for d, x in w.items() if x > 0) for w in space.weights.choices)
    elif space.weights.dropout:  # a trial may keep a single domain: each must suffice alone
        usable = min(pool_rules[d] for d in space.weight_domains())
    else:
        usable = sum(pool_rules[d] for d in space.weight_domains())
    n = space.num_instructions
    most = space.most_instructions()
    if n is not None:
        key = ("search", "space", "num_instructions") + (("high",) if isinstance(n, Range) else ())
        what = f"up to {most:g} distinct instructions asked"
    else:
        key = ("search", "space", "examples_per_instruction")
        what = (f"a budget of {_most(space.budget):g} at {_least(space.examples_per_instruction):g} "
                f"examples per instruction asks for {most:g} distinct instructions")
    if most > usable:
        raise ConfigError(
            f"{_where(source, root, key)}: {what}, but the weighted domains of the pool hold {usable}"
        )
    least_budget = _least(space.budget)
    if n is not None and least_budget < most:
        raise ConfigError(
            f"{_where(source, root, ('search', 'space', 'budget'))}: a budget of {least_budget:g} "
            f"examples cannot cover {most:g} distinct instructions (one example each at least)"
        )
    if n is None and least_budget < _most(space.examples_per_instruction):
        raise ConfigError(
            f"{_where(source, root, ('search', 'space', 'budget'))}: a budget of {least_budget:g} "
            f"examples is less than {_most(space.examples_per_instruction):g} examples of one instruction"
        )


def expected_pool_rules(cfg: Config) -> dict[str, int] | None:
    """Training rules per domain that the configured source will put in the pool (None: known
    only once the files are read; the driver checks the space against the prepared pool)."""
    if cfg.corpus.source == "files":
        return None
    sr = cfg.corpus.string_rewrite
    return {d: sr.rules_per_domain for d in sr.domains}


def with_pool_domains(cfg: Config, domains: list[str], source: str = "config") -> Config:
    """``cfg`` with ``weights: {simplex: all}`` spelt out as the pool's domains (itself otherwise)."""
    w = cfg.search.space.weights
    if not isinstance(w, Simplex) or w.simplex != "all":
        return cfg
    try:
        simplex = Simplex(simplex=list(domains), min_weight=w.min_weight, dropout=w.dropout)
    except ValidationError as e:
        reason = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise ConfigError(f"{key_location(source, ('search', 'space', 'weights'))}: {reason}") from None
    space = cfg.search.space.model_copy(update={"weights": simplex})
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"space": space})})


def _check_unique_keys(node: yaml.Node | None, source: str, path: tuple[str, ...] = ()) -> None:
    """YAML keeps the last of a key given twice, silently; a config that does is refused."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if name in seen:
                raise ConfigError(f"{source}, line {line}, key {'.'.join((*path, name))}: given twice "
                                  f"(first on line {seen[name]}); keep one")
            seen[name] = line
            _check_unique_keys(value, source, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, source, (*path, str(i)))


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read, validate and cross-check a config file (the built-in default when path is None).

    ``overrides`` are values set from the command line, by dotted key (``search.num_samples``, set
    by ``--num-samples``: the flag is the key's last part); None leaves the file's value.
    Raises :class:`ConfigError` naming the file, line and key of the first problems found.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read: {e}") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{at}: not valid YAML: {getattr(e, 'problem', e)}") from None
    _check_unique_keys(root, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}, line 1: the config must be a mapping of keys, got {type(data).__name__}")
    cli = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
            node[leaf] = value
            # Quoted as a shell would take it back: an empty value shows as '', not as nothing.
            cli[dotted] = f"--{leaf.replace('_', '-')} {shlex.quote(str(value))}"
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source, root, cli)) from None
    cfg._cli = cli
    if cfg.search.algorithm == "grid" and "search.num_samples" in cli:  # asked for, and it would do nothing
        raise ConfigError(f"{_where(source, root, ('search', 'num_samples'), cli)}: a grid runs each of its "
                          f"{cfg.search.space.grid_points()} combinations once; --num-samples is for tpe searches")
    expected = expected_pool_rules(cfg)
    if expected is not None:  # the built-in corpus: its domains are known before it is prepared
        cfg = with_pool_domains(cfg, list(expected), source)
        check_space_against_pool(cfg, expected, source, root)
    return cfg


def trial_setup(cfg: Config, pool: Path | str) -> dict:
    """What every trial of an experiment shares: the trainable's ``setup``."""
    return {
        "pool": str(pool),
        "seed": cfg.seed,
        "model": cfg.model.model_dump(),
        "training": cfg.training.model_dump(),
        "resources": cfg.resources_per_trial.model_dump(),
    }


def resolve(path: str) -> Path:
    """A config path as an absolute path (Tune's storage_path must be absolute)."""
    return Path(os.path.expanduser(path)).resolve()


def storage_root(path: str) -> str:
    """A storage_path as Tune takes it: a URI unchanged, a local path made absolute."""
    return path if is_uri(path) else str(resolve(path))
