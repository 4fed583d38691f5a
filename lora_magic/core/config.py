"""The run configuration: one source of truth for every setting of a fine-tuning run.

`RunConfig` is a flat dataclass. Each field carries its help text, its section and, where the
set is closed, its choices. The magic flags, the YAML body of `%%finetune`, the configuration
form and `run.json` are all generated from these fields, so a setting is added in one place.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, did_you_mean

SECTIONS = ("run", "model", "data", "lora", "train", "probes")
# The training methods: each is a module of lora_magic/training registered under its name there.
METHODS = ("sft",)
MAX_NEW_TOKENS = 4096  # the longest answer generation is asked for: a bound on its time and memory
TARGET_PRESETS = ("attention", "attention-all", "all-linear")
# How LoRA's weights start. Left out of PEFT's others: 'loftq', which quantises a full-precision base
# itself and leaves it holding the dequantised weights, so that its adapter fits that changed base
# only, not the one lora_magic loads (in full precision or quantised by bitsandbytes); and 'eva', a
# data pass PEFT runs on a model with one adapter alone (a session's base holds several), whose
# redistributed ranks a resumed run cannot rebuild.
INITS = ("kaiming", "gaussian", "pissa", "olora")
# The initialisations that move part of each adapted weight into the adapter, changing the base
# while the adapter trains; the saved adapter is converted into a LoRA of the untouched base.
BASE_CHANGING_INITS = ("pissa", "olora")
# Whole names only (use fullmatch). No ".": a run name is also its PEFT adapter name, which cannot hold one.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def setting(default: Any, help: str, section: str, *, choices: tuple = (), type: type | None = None):
    """A dataclass field with the metadata the flags, the form and the docs are built from."""
    kind = type or (default.__class__ if default is not None else str)
    meta = {"help": help, "section": section, "choices": choices, "type": kind}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything that defines a run. Unset values mean "choose for this hardware / this data"."""

    name: str | None = setting(
        None, "Run name: the folder under the run store. Default: <model>-<date>-<time>.", "run"
    )
    method: str = setting(
        "sft",
        "Training method: 'sft' (supervised fine-tuning: the loss is on the response of each example).",
        "run",
        choices=METHODS,
    )
    tracking: str = setting(
        "none",
        "Where the run is also logged: 'none', 'mlflow' (params, step metrics, evaluation, adapter; a "
        "local store beside the run store unless MLFLOW_TRACKING_URI is set) or 'tensorboard' (event "
        "files in the run folder). Needs the extra: pip install lora_magic[mlflow] / [tensorboard].",
        "run",
        choices=("none", "mlflow", "tensorboard"),
    )
    launch: str = setting(
        "kernel",
        "Where the run trains: 'kernel' (a thread of this kernel), 'process' (a worker process that "
        "survives kernel restarts) or 'accelerate' (workers under accelerate launch: processes of "
        "them, e.g. one per GPU). Every view follows all three from the run store.",
        "run",
        choices=("kernel", "process", "accelerate"),
    )
    processes: int = setting(
        1,
        "launch='accelerate': how many training processes (data parallel, one per GPU; on a CPU "
        "they share its cores). batch_size is split between them.",
        "run",
    )
    accelerate_config: str | None = setting(
        None,
        "launch='accelerate': an Accelerate config file (accelerate config) for FSDP, DeepSpeed or "
        "several machines. Default: plain data parallel on this machine.",
        "run",
    )
    # -- model -------------------------------------------------------------------------------
    model: str = setting(
        "smollm2-135m",
        "Base model: the built-in 'smollm2-135m', a Hugging Face Hub id, or a local directory.",
        "model",
    )
    quantization: str = setting(
        "none",
        "How the frozen base is stored: 'none', '8bit' (LoRA on an int8 base) or '4bit' (QLoRA, NF4 "
        "with double quantisation), through bitsandbytes.",
        "model",
        choices=("none", "8bit", "4bit"),
    )
    dtype: str = setting(
        "auto",
        "Compute dtype. 'auto': float32 on CPU, bfloat16 on GPUs that support it, else float16.",
        "model",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    device: str = setting(
        "auto",
        "Where the model runs: 'auto' (the GPU when torch sees one, else the CPU), 'cuda' or 'cpu'.",
        "model",
        choices=("auto", "cuda", "cpu"),
    )
    trust_remote_code: bool = setting(
        False, "Run model code shipped with a Hub repository. Off unless you trust it.", "model"
    )
    # -- data --------------------------------------------------------------------------------
    data: Any = setting(
        None,
        "Training data: a DataFrame, a list of dicts, a datasets.Dataset/DatasetDict, or a "
        ".jsonl/.json/.csv/.parquet path. In a magic, a notebook variable name or a path.",
        "data",
        type=object,
    )
    template: str = setting(
        "alpaca",
        "Prompt template: 'alpaca' (Instruction/Response, ends with '### End'), 'chat' (the "
        "tokenizer's chat template) or 'custom' (prompt_format/response_format).",
        "data",
        choices=("alpaca", "chat", "custom"),
    )
    instruction_field: str = setting("instruction", "Field holding the instruction (alpaca, chat).", "data")
    input_field: str = setting(
        "input", "Optional field with extra context for the instruction (alpaca, chat).", "data"
    )
    response_field: str = setting("response", "Field holding the answer to learn (alpaca, chat).", "data")
    prompt_format: str | None = setting(
        None, "Custom template: the prompt as a format string of fields, e.g. 'Q: {question}\\nA: '.", "data"
    )
    response_format: str | None = setting(
        None, "Custom template: the response as a format string of fields, e.g. '{answer}'.", "data"
    )
    system_prompt: str | None = setting(
        None, "Chat template: a system message put before each example.", "data"
    )
    eval_data: Any = setting(
        None,
        "Evaluation data, in the same forms as data. Default: a split of data (eval_fraction).",
        "data",
        type=object,
    )
    eval_fraction: float = setting(
        0.1, "Share of data held out for evaluation when eval_data is not given (0 for none).", "data"
    )
    max_examples: int | None = setting(
        None,
        "Train on a seeded random subset of N examples, chosen after cleaning and the eval split (to "
        "see how much data matters; sweep it: max_examples: [100, 500, null]).",
        "data",
        type=int,
    )
    max_length: int = setting(512, "Longest example in tokens; longer ones are truncated.", "data")
    train_on_prompt: bool = setting(
        False, "Compute the loss on the prompt tokens too. Default: on the response only.", "data"
    )
    dedup: str = setting(
        "none",
        "Drop duplicate rows before training, keeping the first: 'none', 'exact' (the same text in "
        "every field the template reads) or 'near' (also rows as similar as dedup_threshold).",
        "data",
        choices=("none", "exact", "near"),
    )
    dedup_threshold: float = setting(
        0.8,
        "Near-duplicates: the Jaccard similarity of two rows' word 3-grams from which they count as "
        "one (candidates found with MinHash LSH).",
        "data",
    )
    min_response_tokens: int = setting(
        0, "Drop rows whose response has fewer tokens than this (1 drops empty ones). 0: keep all.", "data"
    )
    drop_template_markers: bool = setting(
        False,
        "Drop rows whose fields contain the template's own markers (e.g. '### Response:' or "
        "'### End'), which teach the model a broken format.",
        "data",
    )
    order: str = setting(
        "shuffle",
        "Order of the training examples: 'shuffle' (seeded random) or 'length' (short to long in "
        "every epoch: a curriculum that also pads each batch least).",
        "data",
        choices=("shuffle", "length"),
    )
    # -- lora --------------------------------------------------------------------------------
    r: int = setting(8, "LoRA rank: the size of the low-rank update (8 or 16 are common).", "lora")
    alpha: int = setting(16, "LoRA alpha: the update is scaled by alpha / r.", "lora")
    dropout: float = setting(0.05, "Dropout on the LoRA input.", "lora")
    bias: str = setting("none", "Which biases to train.", "lora", choices=("none", "all", "lora_only"))
    targets: Any = setting(
        "attention",
        "Layers that get adapters: 'attention' (q/v projections), 'attention-all' (q/k/v/o), "
        "'all-linear', or a comma-separated list of layer names.",
        "lora",
        type=str,
    )
    dora: bool = setting(
        False,
        "DoRA (weight-decomposed LoRA): LoRA learns the direction of each adapted weight and one "
        "more vector per layer its magnitude. Often better than LoRA at a low r, for a slower step and "
        "slower unmerged answers; merging and export fold it in. Not on an 8bit base.",
        "lora",
    )
    rslora: bool = setting(
        False,
        "Rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r, so that a "
        "large r (64 and up) learns as fast as a small one. Costs nothing.",
        "lora",
    )
    init: str = setting(
        "kaiming",
        "How the adapter starts. 'kaiming': LoRA's own (A random, B zero: training starts from the "
        "base). 'gaussian': the same with A drawn from a normal distribution. 'pissa' and 'olora': A "
        "and B from each adapted weight's top singular directions (PiSSA) or its QR decomposition "
        "(OLoRA), taken out of the base while training, which often learns faster; the saved adapter "
        "is converted to a plain LoRA of twice the rank that applies to the untouched base. pissa "
        "and olora need a full-precision base (quantization 'none') and no dora.",
        "lora",
        choices=INITS,
    )
    include_lm_head: bool = setting(
        False,
        "With 'all-linear', count the output head (lm_head) as a target too: for %lora plan; "
        "training refuses it (TRL computes the loss from the head's weight directly).",
        "lora",
    )
    # -- train -------------------------------------------------------------------------------
    steps: int = setting(0, "Optimizer steps to train. 0: train for `epochs` instead.", "train")
    epochs: float = setting(1.0, "Passes over the training data (when steps is 0).", "train")
    learning_rate: float = setting(2e-4, "Peak learning rate.", "train")
    batch_size: int = setting(
        4, "Examples per step, before gradient accumulation (split between processes).", "train"
    )
    grad_accum: int = setting(1, "Steps whose gradients are summed before each optimizer step.", "train")
    warmup_steps: int = setting(0, "Steps of linear learning-rate warm-up.", "train")
    scheduler: str = setting(
        "linear",
        "Learning-rate schedule after warm-up.",
        "train",
        choices=("linear", "cosine", "constant", "constant_with_warmup"),
    )
    seed: int = setting(42, "Random seed for data order, dropout and initialisation.", "train")
    eval_every: int = setting(
        0,
        "Evaluate every N steps (and at the start and the end). 0: as often as keeps evaluation within "
        "about a tenth of the run's time: at the end, and for longer runs also at the start and up to "
        "9 times in between.",
        "train",
    )
    eval_rows: int = setting(
        32,
        "Rows of the eval split each evaluation during training scores: the same sample every time, "
        "whatever the run's seed, so that runs compare (0: every row). The end-of-run evaluation "
        "(evaluate) and %lora eval score every row.",
        "train",
    )
    evaluate: bool = setting(
        False,
        "At the end, answer the eval prompts greedily with the base and the adapter and score them "
        "(eval loss, token-F1, ROUGE-L, exact match, terminator): what %lora eval does.",
        "train",
    )
    save_every: int = setting(
        0, "Save a resumable checkpoint every N steps. 0: none before the end.", "train"
    )
    precision: str = setting(
        "auto",
        "Mixed precision. 'auto': none on CPU, bf16 on GPUs that support it, else fp16.",
        "train",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    gradient_checkpointing: str = setting(
        "auto",
        "Recompute activations to save memory. 'auto': only on a GPU with under 16 GiB.",
        "train",
        choices=("auto", "on", "off"),
    )
    # -- probes ------------------------------------------------------------------------------
    probes: list = setting(
        [],
        "Prompts answered by the base and the adapter as training goes, to watch behaviour change.",
        "probes",
    )
    probe_every: int = setting(0, "Regenerate the probes every N steps. 0: four times per run.", "probes")
    probe_tokens: int = setting(48, "New tokens per probe answer (at most 4096).", "probes")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata["choices"]
            if choices and (not isinstance(value, str) or value not in choices):
                raise ConfigError(
                    f"{f.name}={value!r} is not valid; choose one of: {', '.join(choices)}"
                    + did_you_mean(str(value), choices)
                )
            _check_type(f, value)
        if self.name is not None and not RUN_NAME.fullmatch(self.name):
            raise ConfigError(
                f"name={self.name!r} is not a valid run name; use letters, digits, '_' and '-' "
                "(starting with a letter or digit, at most 100 characters)"
            )
        for name in ("r", "alpha", "batch_size", "grad_accum", "max_length", "probe_tokens", "processes"):
            _require(self, name, getattr(self, name) >= 1, "a whole number of at least 1")
        _require(self, "probe_tokens", self.probe_tokens <= MAX_NEW_TOKENS, f"at most {MAX_NEW_TOKENS}")
        for name in ("steps", "warmup_steps", "eval_every", "eval_rows", "save_every", "probe_every"):
            _require(self, name, getattr(self, name) >= 0, "0 or more")
        _require(self, "max_examples", self.max_examples is None or self.max_examples >= 1, "at least 1")
        _require(self, "min_response_tokens", self.min_response_tokens >= 0, "0 or more")
        _require(self, "dedup_threshold", 0 < self.dedup_threshold <= 1, "more than 0 and at most 1")
        _require(self, "epochs", self.epochs > 0, "more than 0")
        _require(self, "learning_rate", 0 < self.learning_rate < 1, "between 0 and 1, e.g. 2e-4")
        _require(self, "dropout", 0 <= self.dropout < 1, "from 0 up to (not including) 1")
        _require(self, "eval_fraction", 0 <= self.eval_fraction < 1, "from 0 up to (not including) 1")
        _require(self, "seed", 0 <= self.seed < 2**32, "from 0 to 4294967295 (2**32 - 1)")
        if self.processes > 1 and self.launch != "accelerate":
            raise ConfigError(
                f"processes={self.processes} needs launch='accelerate'; with launch={self.launch!r} one "
                "process trains"
            )
        if self.batch_size % self.processes:
            raise ConfigError(
                f"batch_size={self.batch_size} cannot be split between processes={self.processes}: "
                "make batch_size a multiple of processes"
            )
        if isinstance(self.targets, str):
            names = [t.strip() for t in self.targets.split(",") if t.strip()]
            self.targets = names[0] if len(names) == 1 and names[0] in TARGET_PRESETS else names
        _require(
            self,
            "targets",
            self.targets in TARGET_PRESETS
            or (
                isinstance(self.targets, list)
                and self.targets
                and all(isinstance(t, str) for t in self.targets)
            ),
            f"one of {', '.join(TARGET_PRESETS)} or a list of layer names",
        )
        if self.changes_base and self.quantization != "none":
            raise ConfigError(
                f"init={self.init!r} needs a full-precision base, but quantization={self.quantization!r}: "
                f"it changes the base's weights, which a {self.quantization} base cannot hold exactly; use "
                "quantization='none', or init 'kaiming' or 'gaussian' with a quantised base"
            )
        if self.changes_base and self.dora:
            raise ConfigError(
                f"init={self.init!r} cannot go with dora=True: the adapter saved for the untouched base keeps "
                "LoRA's A and B but not DoRA's magnitudes; use dora with init 'kaiming' or 'gaussian'"
            )
        if self.dora and self.quantization == "8bit":
            raise ConfigError(
                "dora=True cannot train on an 8bit base: PEFT's DoRA leaves bitsandbytes' int8 layers "
                "without their scales after the first step; use dora with quantization '4bit' or 'none'"
            )
        if self.template == "custom" and not (self.prompt_format and self.response_format):
            raise ConfigError(
                "template='custom' needs prompt_format and response_format, e.g. "
                "prompt_format='Q: {question}\\nA: ', response_format='{answer}'"
            )
        for name in ("prompt_format", "response_format"):
            _check_format(name, getattr(self, name))
        if isinstance(self.probes, str):
            self.probes = [self.probes]
        _require(self, "probes", all(isinstance(p, str) for p in self.probes), "a list of prompt strings")

    @property
    def changes_base(self) -> bool:
        """The adapter's initialisation moves part of each adapted weight out of the base while it trains."""
        return self.init in BASE_CHANGING_INITS

    # -- conversions ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from flat settings, as written in YAML or flags; unknown names are refused."""
        check_names(values)
        return cls(**{key: coerce(key, value) for key, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings. In-memory data is described, not copied: the run store keeps the records."""
        out = dataclasses.asdict(self)
        for key in ("data", "eval_data"):
            out[key] = describe_source(out[key])
        return out

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some settings changed; unknown names are refused with a suggestion."""
        check_names(changes)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Base:
    """The settings that identify a loaded base model: runs that agree on them share one in memory."""

    model: str
    quantization: str
    dtype: str
    device: str
    trust_remote_code: bool

    @classmethod
    def of(cls, config: RunConfig) -> Base:
        return cls(*(getattr(config, name) for name in BASE_SETTINGS))


BASE_SETTINGS = tuple(f.name for f in dataclasses.fields(Base))


@dataclass(frozen=True)
class Sampling:
    """How answers are generated: greedy (temperature 0) or sampled, and how long they may be."""

    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": (
                isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
                f"a whole number from 1 to {MAX_NEW_TOKENS}",
            ),
            "temperature": (
                _real(self.temperature) and 0 <= self.temperature <= 10,
                "a number from 0 (greedy) to 10",
            ),
            "top_p": (_real(self.top_p) and 0 < self.top_p <= 1, "more than 0 and at most 1"),
        }
        for name, (ok, valid) in checks.items():
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not valid; it must be {valid}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_arguments(self) -> dict[str, Any]:
        """`model.generate` keywords."""
        chosen = (
            {"do_sample": False}
            if self.greedy
            else {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        )
        return {"max_new_tokens": self.max_new_tokens, "top_k": None, **chosen}


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def changed_settings(stored: dict[str, Any], config: RunConfig) -> list[str]:
    """'key: then -> now' for each setting of `config` that differs from a run's stored settings
    (data sources are the run's own records, so they are left out; a setting the run predates
    counts as its default)."""
    defaults = RunConfig().to_dict()
    return [
        f"{key}: {stored.get(key, defaults[key])!r} then, {value!r} now"
        for key, value in config.to_dict().items()
        if key not in ("data", "eval_data") and stored.get(key, defaults[key]) != value
    ]


def check_names(settings: dict[str, Any]) -> None:
    known = field_names()
    for key in settings:
        if key not in known:
            raise ConfigError(
                f"unknown setting {key!r}{did_you_mean(key, known)}; valid settings: {', '.join(known)}"
            )


def _require(config: RunConfig, name: str, ok: bool, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={getattr(config, name)!r} is not valid; it must be {valid}")


EXPECTED = {int: "a whole number", float: "a finite number", bool: "true or false", str: "text"}


def _check_type(f: dataclasses.Field, value: Any) -> None:
    """Refuse a value of the wrong kind (r=2.5, steps=None, r=[8]) before anything uses it."""
    kind = f.metadata["type"]
    if value is None:
        ok = f.default is None
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is str:
        ok = isinstance(value, str) or (f.name == "targets" and isinstance(value, list))
    elif kind is list:
        ok = isinstance(value, list | str)
    else:
        ok = True
    if not ok:
        expected = EXPECTED.get(kind, "a list of prompt strings")
        given = " has no value" if value is None else f"={value!r} is not valid"
        raise ConfigError(f"{f.name}{given}; it must be {expected}")


# The format spec of a text field: [[fill]align][width][.precision][s]; its sizes are bounded, since
# `{instruction:>999999999}` would pad every example with a billion spaces.
TEXT_SPEC = re.compile(r"(?:.?[<>^])?(\d*)(?:\.(\d+))?s?")
MAX_FIELD_WIDTH = 1000


def _check_format(name: str, template: str | None) -> None:
    """A custom template must be a format string whose fields name record fields."""
    if template is None:
        return
    try:
        fields = [
            (field, spec) for _, field, spec, _ in string.Formatter().parse(template) if field is not None
        ]
    except ValueError as error:
        raise ConfigError(
            f"{name}={template!r} is not a valid format string ({error}); write {{{{ and }}}} for a literal brace"
        ) from None
    for field_name, spec in fields:
        if not field_name or field_name.isdigit() or "." in field_name or "[" in field_name:
            raise ConfigError(
                f"{name}={template!r} has the field {{{field_name}}}; name a record field inside the "
                "braces, e.g. {question} (write {{ and }} for a literal brace)"
            )
        sizes = TEXT_SPEC.fullmatch(spec or "")
        if not sizes or any(int(size or 0) > MAX_FIELD_WIDTH for size in sizes.groups()):
            raise ConfigError(
                f"{name}={template!r} formats {{{field_name}:{spec}}}, which text cannot take; a field's "
                f"format may align it in a width and cut it at a precision, each at most {MAX_FIELD_WIDTH} "
                f"(e.g. {{{field_name}:<20}}), or be left out: {{{field_name}}}"
            )


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def choices(name: str) -> tuple:
    """The allowed values of a setting with a closed set of values."""
    return next(f for f in dataclasses.fields(RunConfig) if f.name == name).metadata["choices"]


def fields_by_section() -> dict[str, list[dataclasses.Field]]:
    sections: dict[str, list[dataclasses.Field]] = {s: [] for s in SECTIONS}
    for f in dataclasses.fields(RunConfig):
        sections[f.metadata["section"]].append(f)
    return sections


def coerce(name: str, value: Any) -> Any:
    """Turn a value written as text (a flag, YAML, a form) into the field's type."""
    kind = next(f for f in dataclasses.fields(RunConfig) if f.name == name).metadata["type"]
    if not isinstance(value, str) or kind in (str, object):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    try:
        if kind is bool:
            if text.lower() in ("true", "yes", "on", "1"):
                return True
            if text.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if kind is list:
            return [text]
        return kind(text)
    except ValueError:
        expected = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
        raise ConfigError(f"{name}={value!r} is not valid; it must be {expected}") from None


def describe_source(source: Any) -> Any:
    """A short JSON-safe description of a data source (paths are kept as they are)."""
    if source is None or isinstance(source, str):
        return source
    rows = len(source) if hasattr(source, "__len__") else "?"
    return f"<{type(source).__name__}: {rows} rows>"
