"""Hyper-parameters: five sections (data, network, counts, training, generation) in one TraceConfig, presets from
the paper's tables (YAML files shipped with the package)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import yaml

from sctrace._errors import SctraceInputError

DEFAULT_PRESET = "cpu-small"

# Likelihoods of log-normalised expression; the others model raw counts.
LOGNORM_LIKELIHOODS = ("gaussian", "hurdle")
# What `likelihood: auto` gives log-normalised data (sctrace.data.io.resolve_count_kind).
# Shalek LPS, 3 seeds: EMD 0.483 (interpolation) and 0.429 (extrapolation) vs 0.582 and 0.547 with gaussian.
DEFAULT_LOGNORM_LIKELIHOOD = "hurdle"

# Keys that take one of a few words, typed as such (mypy checks the code's uses) and checked at load time, so a
# typo is named there, not deep inside a fit. CHOICES is read off the annotations: one list per key.
Pairing = Literal["random", "stratified", "ot"]
RankEncoding = Literal["learnable", "sinusoidal", "unified"]
Likelihood = Literal["auto", "zinb", "nb", "gaussian", "hurdle"]
ZinbMean = Literal["nb", "scale"]
CountPooling = Literal["cls", "cls+mean"]
HurdleMarginal = Literal["gaussian", "quantile"]
CountSampling = Literal["iid", "stratified", "copula"]
MaskSchedule = Literal["cosine", "exponential", "cubic", "linear"]
Encoder = Literal["scratch", "random", "geneformer"]
EncoderMode = Literal["frozen", "finetune"]

# Keys removed with the benchmarks they lost (CHANGELOG.md): the value the kept code always uses, and whether
# another value built a different network (whose saved weights the kept code cannot load).
REMOVED_KEYS: dict[str, tuple[Any, bool]] = {
    "tie_token_embeddings": (False, True),
    "count_input": ("complete", False),
    "time_mixup": (0.0, False),
    "source_target": (False, False),
    "count_loss_weight": (1.0, False),
    "gradient_clip": (1.0, False),
    "group_by_length": (False, False),
    "time_bias": (False, True),  # its bias module has weights
    "count_time": (False, True),  # the count head's first layer took one more input
    "source_time_target": (False, False),  # training only
    "count_standardise": (False, True),  # its running statistics are buffers of the count head
    "time_code": ("absolute", True),  # "relative" timed every block from the decoded time: another model
    "count_prior": ("none", True),  # the count head read the prior's features and kept its statistics as buffers
    "source_times": ("first", False),  # "all" read other training times as the source: training only
    "min_steps": (0, False),  # a step budget with warm-up and cosine decay: training only; min_rows replaced it
}
# config.yaml's format: 1 (no version key) held the keys above, and its missing keys meant the defaults of the
# time (below); 2 dropped the removed keys and took cpu-small's settings as the defaults; 3 added min_rows, which a
# version-2 file lacks and meant 0 (one partner set per source cell); 4 nests the same keys by section (versions
# 1-3 are flat); 5 added source_times (since removed: earlier runs lack it, and it meant "first").
CONFIG_VERSION = 5
LEGACY_DEFAULTS: dict[str, Any] = {
    "n_top_genes": 2000, "max_len": 128, "dropout": 0.1, "max_epochs": 30, "time_scale": 100.0, "context_dropout": 0.0,
    "pairing": "random", "zinb_mean": "nb", "count_pooling": "cls", "hurdle_marginal": "gaussian",
    "count_sampling": "iid", "genes": "hvg", "likelihood": "zinb", "min_rows": 0,
}

# Probabilities of leaving something out: 1 would leave out everything.
RATES = ("dropout", "count_dropout", "context_dropout")


@dataclass
class DataConfig:
    """What the corpus holds: genes, sentence length, and how training rows pair cells across times."""

    n_top_genes: int = 1000
    # Which genes are modelled: "auto" (every expressed gene up to 3,000, else "hvg"), "hvg" (the n_top_genes most
    # variable; every expressed gene when there are fewer), "all" (every gene expressed in a training cell) or the
    # path of a file listing gene names, one per line. Runs saved before "auto" existed keep the "hvg" they wrote.
    genes: str = "auto"
    max_len: int = 64
    pairing: Pairing = "ot"
    # At least this many training rows (0: one per source cell, the runs before this key and the paper presets):
    # each source cell of a small course gets several partner sets, drawn from an entropic OT plan so that they
    # differ, and its hundred fixed rows are no longer learnt by heart (BENCHMARKS.md, "Several partner sets per
    # source cell"). A course with this many source cells keeps one set each, from the entropic plan too.
    min_rows: int = 1024


@dataclass
class NetworkConfig:
    """The token transformer: encoder, decoder and how genes' ranks and times are coded."""

    d_model: int = 64
    # "scratch": trained with the rest; "random": the same encoder left at its random initialisation (a control:
    # what learning to read the source adds); "geneformer": a pretrained Geneformer-format BERT reads the source.
    encoder: Encoder = "scratch"
    encoder_path: str = ""  # directory of the pretrained encoder (config.json, safetensors, token dictionary, medians)
    encoder_mode: EncoderMode = "frozen"  # frozen | finetune
    n_heads: int = 4
    head_dim: int = 16
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    dropout: float = 0.0
    # Gene-rank code: "learnable" (the paper's), "sinusoidal", or "unified" (one sinusoidal code over all time
    # points laid end to end, no separate time code; the paper's section 5.3).
    rank_encoding: RankEncoding = "learnable"
    time_scale: float = 1.0


@dataclass
class CountConfig:
    """The count decoder: what it reads and the likelihood of the values it gives."""

    # The count decoder reads the cell's own sentence: a gene in it gets a level plus a slope in log rank, a gene
    # outside it another level, so each generated cell's values follow its generated sentence (issue 24).
    count_sentence: bool = False
    count_hidden: int = 128
    count_dropout: float = 0.1
    # "auto": zinb for raw counts, the hurdle for log-normalised values, as the data hold (decided once, by
    # sctrace.data.io.resolve_count_kind; a saved run records the likelihood it was fitted with).
    likelihood: Likelihood = "auto"
    # "nb": scVI's link, the NB part's mean is library x scale (the paper presets); "scale": the ZINB's own mean is
    # library x scale, so generated cells keep their library size.
    zinb_mean: ZinbMean = "scale"
    # What the count decoder reads: "cls" (the paper presets) or "cls+mean" (also the mean of the gene positions'
    # decoder states).
    count_pooling: CountPooling = "cls+mean"
    # The hurdle's positive part: "gaussian" (MAST's; the paper presets) or "quantile" (the Gaussian on normal
    # scores of each gene's training values, drawn back through them).
    hurdle_marginal: HurdleMarginal = "quantile"


@dataclass
class TrainingConfig:
    """The optimiser, the masking schedule, how long to train, and what a training batch leaves out."""

    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    count_lr: float = 5e-3  # the count decoder's own optimiser group
    count_weight_decay: float = 1e-3
    mask_schedule: MaskSchedule = "cosine"
    max_epochs: int = 60
    patience: int = 8
    # This fraction of every training time's cells is held aside, paired only among itself: validation (whose count
    # loss picks the best checkpoint and stops training) scores cells no training row holds.
    val_fraction: float = 0.1
    # Each context time point is left out of a training batch with this probability, so the decoder cannot
    # tell the target by the gap it leaves in the context (validation always uses the full context).
    context_dropout: float = 0.5


@dataclass
class GenerationConfig:
    """How new cells are drawn: the token sampler, and the count decoder's values across cells."""

    temperature: float = 1.0
    n_iter: int = 20
    # How generated cells' values are drawn from the count decoder: "iid" (each value on its own; the paper
    # presets), "stratified" (a Latin hypercube across the cells of one predict call, per gene) or "copula"
    # (the same levels, re-ordered across cells so genes co-vary as in the nearest times' training cells).
    count_sampling: CountSampling = "copula"


# Section name -> its dataclass, in the order config.yaml lists them.
SECTIONS: dict[str, type] = {"data": DataConfig, "network": NetworkConfig, "counts": CountConfig,
                             "training": TrainingConfig, "generation": GenerationConfig}
# Each key's section: keys are unique across sections, so presets, user files and overrides stay flat.
SECTION_OF: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
assert len(SECTION_OF) == sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values()), "a key in two sections"


@dataclass
class TraceConfig:
    """Everything that shapes a run; saved as ``config.yaml`` in the run directory, nested by section.

    Read a key through its section (``config.training.lr``); set keys with :meth:`update`, by flat name or nested
    by section. The defaults are the recommended model (cpu-small); the paper presets set the published values, and
    BENCHMARKS.md (and docs/guide.md, "Why the defaults") has the measurements behind each choice.
    """

    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    counts: CountConfig = field(default_factory=CountConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def flat(self) -> dict[str, Any]:
        """Every key by its flat name, section by section (what resume checks and reports compare)."""
        return {key: value for name in SECTIONS for key, value in dataclasses.asdict(getattr(self, name)).items()}

    def nested(self) -> dict[str, dict[str, Any]]:
        """Section -> its keys: config.yaml's layout."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def update(self, overrides: Mapping[str, Any], origin: str = "overrides") -> TraceConfig:
        """A copy with ``overrides`` applied, flat (``{"lr": 0.01}``) or by section (``{"training": {"lr": 0.01}}``);
        unknown keys and wrong types are named in the error."""
        overrides = flatten_overrides(overrides, origin)
        removed = sorted(set(overrides) & set(REMOVED_KEYS))
        if removed:
            raise SctraceInputError(
                f"config key(s) {', '.join(removed)} in {origin} were removed (they lost their benchmarks, "
                "CHANGELOG.md); delete them."
            )
        unknown = sorted(set(overrides) - set(SECTION_OF))
        if unknown:
            raise SctraceInputError(
                f"unknown config key(s) {', '.join(unknown)} in {origin}; valid keys: {', '.join(sorted(SECTION_OF))}."
            )
        values = self.flat()
        for key, value in overrides.items():
            if value is None:
                continue
            kind = type(values[key])
            try:
                values[key] = kind(value) if kind is not bool else bool(value)
            except (TypeError, ValueError) as err:
                raise SctraceInputError(f"config key '{key}' in {origin} must be a {kind.__name__}, got {value!r}.") from err
            if key in CHOICES and values[key] not in CHOICES[key]:
                raise SctraceInputError(
                    f"config key '{key}' in {origin} must be one of {', '.join(CHOICES[key])}, got {value!r}."
                )
            if key in RATES and not 0.0 <= values[key] < 1.0:
                raise SctraceInputError(f"config key '{key}' in {origin} is a probability in [0, 1), got {value!r}.")
        return TraceConfig(**{name: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
                              for name, cls in SECTIONS.items()})

    def to_yaml(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump({"config_version": CONFIG_VERSION, **self.nested()}, sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TraceConfig:
        """A run's saved config, migrated from older formats (:func:`migrate_run_config`)."""
        return cls().update(migrate_run_config(_read_yaml(path), str(path)), origin=str(path))


# Each Literal-typed key and the words it takes, from the sections' annotations.
CHOICES: dict[str, tuple[str, ...]] = {
    name: get_args(hint) for cls in SECTIONS.values() for name, hint in get_type_hints(cls).items() if get_args(hint)
}


def flatten_overrides(overrides: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Config keys by flat name, from a mapping that may nest some of them by section.

    A key put in another section is refused (it was meant for somewhere else); one given twice takes the later.
    """
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in SECTIONS:
            items = [(key, value)]
        elif value is None:  # an empty section in YAML
            continue
        elif not isinstance(value, Mapping):
            raise SctraceInputError(f"config section '{key}' in {origin} must be a mapping of its keys, got {value!r}.")
        else:
            misplaced = sorted(k for k in value if SECTION_OF.get(k, key) != key)
            if misplaced:
                shown = ", ".join(f"{k} (in {SECTION_OF[k]})" for k in misplaced)
                raise SctraceInputError(f"config key(s) {shown} in {origin} are not in section {key}; move them.")
            items = list(value.items())
        flat.update(items)
    return flat


def migrate_run_config(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """A saved run's config as today's keys, flat (for :meth:`TraceConfig.update`): a version-4 file's sections
    flattened, removed keys dropped where the kept code reproduces the run, the keys a version-1 file lacks filled
    with the defaults of its time (:data:`LEGACY_DEFAULTS`).

    A removed key that built another network (e.g. tied embeddings) is refused: its weights do not fit. A removed
    training-only setting is dropped with a warning: the saved weights still predict as trained.
    """
    raw = dict(raw)
    version = raw.pop("config_version", 1)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise SctraceInputError(f"{origin} has config_version {version!r}, newer than this sctrace reads "
                                f"({CONFIG_VERSION}); upgrade sctrace.")
    raw = flatten_overrides(raw, origin)  # version 4 nests by section; 1-3 are flat already
    if version == 1:
        raw = {**LEGACY_DEFAULTS, **raw}  # a key such a run lacks took the default of its time
    elif version == 2:
        raw.setdefault("min_rows", 0)  # fitted before the key: one partner set per source cell
    if raw.get("count_pooling") == "cls+mean+genes":
        raise SctraceInputError(f"{origin} was fitted with count_pooling: cls+mean+genes, which sctrace no longer "
                                "builds; re-fit the run.")
    changed = []
    for key, (kept, network) in REMOVED_KEYS.items():
        if key not in raw:
            continue
        value = raw.pop(key)
        if value == kept:
            continue
        if network:
            raise SctraceInputError(f"{origin} was fitted with {key}: {value}, which sctrace no longer builds; "
                                    "re-fit the run.")
        changed.append(f"{key}: {value}")
    if changed:
        warnings.warn(f"{origin} was trained with {', '.join(changed)}, no longer supported; its weights predict "
                      "as trained, but a resumed fit would go on without it.", UserWarning, stacklevel=3)
    return raw


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise SctraceInputError(f"cannot read config file {path} ({err.strerror}); check the path.") from err
    except yaml.YAMLError as err:
        raise SctraceInputError(f"config file {path} is not valid YAML ({err}).") from err
    if not isinstance(data, dict):
        raise SctraceInputError(f"config file {path} must hold a mapping of key: value pairs.")
    return data


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("sctrace.presets").iterdir() if p.name.endswith(".yaml"))


def load_config(preset: str = DEFAULT_PRESET, config_file: str | os.PathLike | Mapping[str, Any] | TraceConfig | None = None,
                **overrides: Any) -> TraceConfig:
    """Preset, then a user YAML file (or the same keys as a mapping, or a whole :class:`TraceConfig`), then explicit
    overrides (e.g. CLI flags), each on top of the last."""
    names = preset_names()
    if preset not in names:
        raise SctraceInputError(f"unknown preset '{preset}'; choose one of {', '.join(names)}.")
    path = resources.files("sctrace.presets") / f"{preset}.yaml"
    config = TraceConfig().update(yaml.safe_load(path.read_text()) or {}, origin=f"preset {preset}")
    user: dict[str, Any] = {}
    origin = "config"
    if isinstance(config_file, TraceConfig):
        user = config_file.flat()
    elif isinstance(config_file, Mapping):
        user = dict(config_file)
    elif isinstance(config_file, (str, os.PathLike)):
        user, origin = _read_yaml(config_file), str(config_file)
    elif config_file is not None:
        raise SctraceInputError(f"config must be a YAML file's path, a mapping of config keys or a TraceConfig, "
                                f"not {type(config_file).__name__}.")
    config = config.update(user, origin=origin)
    config = config.update(overrides, origin="overrides")
    # A number of highly variable genes asked for by the user (not the preset's) means HVGs: with `genes: auto`
    # left in place, a 900-gene data set would model all 900 whatever --n-top-genes said.
    asked = {**flatten_overrides(user, origin),
             **{k: v for k, v in flatten_overrides(overrides, "overrides").items() if v is not None}}
    if "n_top_genes" in asked and "genes" not in asked and config.data.genes == "auto":
        config = config.update({"genes": "hvg"}, origin="overrides")
    return config
