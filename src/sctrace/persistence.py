"""A fitted TRACE to and from its run directory: corpus, config, weights (safetensors), copula and encoder
architecture; no pickle is read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sctrace._errors import SctraceInputError, in_words, option
from sctrace.config import TraceConfig
from sctrace.data.corpus import Corpus
from sctrace.model.module import TraceNet
from sctrace.model.sampling import GeneCopula
from sctrace.network import build_net, pretrained_encoder
from sctrace.rundir import (
    CONFIG_FILE,
    COPULA_FILE,
    CORPUS_DIR,
    ENCODER_FILE,
    EXTRAPOLATION_FILE,
    INPUTS_FILE,
    WEIGHTS_FILE,
    _check_config_keys,
)

if TYPE_CHECKING:
    from sctrace.estimator import TRACE

__all__ = ["load_trace", "write_description", "write_extrapolation", "write_weights"]


def write_description(model: TRACE, run_dir: Path) -> None:
    """Everything but the weights: corpus, config and, with a pretrained encoder, its architecture."""
    model.corpus.save(run_dir / CORPUS_DIR)
    model.config.to_yaml(run_dir / CONFIG_FILE)
    if model.inputs is not None:
        (run_dir / INPUTS_FILE).write_text(json.dumps(model.inputs, indent=1))
    if model.copula is not None:
        tmp = run_dir / (COPULA_FILE + ".tmp")
        model.copula.save(tmp)
        os.replace(tmp, run_dir / COPULA_FILE)  # atomic, as the weights
    encoder = pretrained_encoder(model.net)
    if encoder is not None:
        (run_dir / ENCODER_FILE).write_text(json.dumps(encoder.to_config()))
    write_extrapolation(model, run_dir)


def write_extrapolation(model: TRACE, run_dir: Path) -> None:
    """The calibrated extrapolation step, when there is one (a run without the file decodes at the time asked)."""
    if model.extrapolation is not None:
        (run_dir / EXTRAPOLATION_FILE).write_text(json.dumps(model.extrapolation, indent=1))


def write_weights(net: TraceNet, run_dir: Path) -> None:
    """The network's weights as safetensors, written whole or not at all."""
    from safetensors.torch import save_file

    tmp = run_dir / (WEIGHTS_FILE + ".tmp")
    # clone: tied tables are one tensor under two names, and safetensors refuses shared memory.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "sctrace", "version": "1"})
    os.replace(tmp, run_dir / WEIGHTS_FILE)  # atomic: a kill never leaves a half-written model


def load_trace(cls: type[TRACE], run_dir: str | os.PathLike) -> TRACE:
    """Load a saved run without the training data (no pickle is read: safetensors + JSON/YAML + .npy)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SctraceInputError(
            f"run directory {run_dir} does not exist; pass "
            + in_words("the run_dir that fit() or save() wrote.", "the --out directory of `sctrace fit`.")
        )
    config = TraceConfig.from_yaml(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).exists() else None
    pretrained = config is not None and config.network.encoder == "geneformer"
    needed = (CONFIG_FILE, WEIGHTS_FILE, CORPUS_DIR) + ((ENCODER_FILE,) if pretrained else ())
    for name in needed:
        if not (run_dir / name).exists():
            raise SctraceInputError(
                f"run directory {run_dir} is incomplete: {name} is missing (was fit interrupted? resume it with "
                f"{option('resume', True)})."
            )
    _check_config_keys(run_dir)
    assert config is not None  # its file is among those needed
    model = cls.__new__(cls)
    model.config = config
    model.corpus = Corpus.load(run_dir / CORPUS_DIR)
    model.timecourse = None
    model.seed = 0
    model.history = None
    try:
        model.inputs = json.loads((run_dir / INPUTS_FILE).read_text()) if (run_dir / INPUTS_FILE).exists() else None
    except (OSError, json.JSONDecodeError):
        model.inputs = None  # only a later resume reads it, and refuses it there
    encoder_config = None
    if model.config.network.encoder == "geneformer":
        try:
            encoder_config = json.loads((run_dir / ENCODER_FILE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SctraceInputError(f"{run_dir / ENCODER_FILE} is corrupt ({err}); re-run `sctrace fit`.") from err
    mismatch = (f"model weights in {run_dir} do not match its config and corpus ({{}}); the run directory is "
                "corrupt or mixed from two runs, re-run `sctrace fit`.")
    try:
        model.net = build_net(model.corpus.spec, model.config, encoder_config)
    except SctraceInputError:
        raise
    except (ValueError, RuntimeError, TypeError, AssertionError) as err:
        raise SctraceInputError(mismatch.format(f"the network cannot be built: {err}")) from err
    try:
        state = load_file(str(run_dir / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise SctraceInputError(f"model weights {run_dir / WEIGHTS_FILE} are corrupt ({err}); re-run `sctrace fit`.") from err
    try:
        missing, unexpected = model.net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of other shapes
        wrong = [k for k, v in model.net.state_dict().items() if k in state and state[k].shape != v.shape]
        raise SctraceInputError(mismatch.format(f"{len(wrong)} tensors of another shape, e.g. {wrong[:1]}")) from err
    if missing or unexpected:
        raise SctraceInputError(mismatch.format(f"{len(missing)} missing, {len(unexpected)} unexpected tensors"))
    try:
        model.copula = GeneCopula.load(run_dir / COPULA_FILE) if (run_dir / COPULA_FILE).exists() else None
    except (SafetensorError, OSError, KeyError) as err:
        raise SctraceInputError(f"{run_dir / COPULA_FILE} is corrupt ({err}); re-run `sctrace fit`.") from err
    model.extrapolation = None
    if (run_dir / EXTRAPOLATION_FILE).exists():
        try:
            model.extrapolation = json.loads((run_dir / EXTRAPOLATION_FILE).read_text())
            step = float(model.extrapolation["step"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise SctraceInputError(f"{run_dir / EXTRAPOLATION_FILE} is corrupt ({err}); re-run `sctrace fit`.") from err
        if not 0.0 <= step <= 1.0:
            raise SctraceInputError(f"{run_dir / EXTRAPOLATION_FILE} holds step {step:g}, outside 0 to 1; re-run `sctrace fit`.")
    model.net.eval()
    model.is_trained = True
    return model
