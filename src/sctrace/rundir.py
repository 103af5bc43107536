"""The run directory: its files, staging and swapping in a finished fit, resume checks, scratch corpora.

Kept apart from the estimator (TRACE) so the façade holds the method's steps and this module what a run leaves
on disk and how it is kept safe (a killed fit never loses the previous run; a resume must match its inputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sctrace._errors import SctraceInputError, option, option_name
from sctrace.config import SECTION_OF, TraceConfig, flatten_overrides, migrate_run_config
from sctrace.data.corpus import CorpusSpec
from sctrace.data.io import TimeCourse

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
ENCODER_FILE = "encoder.json"  # the pretrained encoder's architecture and gene map; its weights are in WEIGHTS_FILE
CORPUS_DIR = "corpus"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
RUN_MARKER = "sctrace_run.json"  # marks a directory as written by sctrace, so --overwrite never touches others
# Runs of format 2 or later write every config key, so a key missing from their config.yaml means a corrupt run;
# older runs lack the keys added since and load with the defaults that reproduce them.
RUN_FORMAT = 2
COPULA_FILE = "copula.safetensors"  # the training cells' gene-gene normal-score factors (sampling "copula")
EXTRAPOLATION_FILE = "extrapolation.json"  # the calibrated step past the last observed time (sctrace.calibrate)
INPUTS_FILE = "fit_inputs.json"  # the data's fingerprint and the split a resumed fit must share with the run
_OWN_ENTRIES = (WEIGHTS_FILE, CONFIG_FILE, ENCODER_FILE, COPULA_FILE, INPUTS_FILE, EXTRAPOLATION_FILE, CORPUS_DIR,
                CHECKPOINT_DIR, LOG_DIR, RUN_MARKER)
# Config keys a resumed fit may change: they decide how long it trains, not what it trains on.
_RESUMABLE_KEYS = ("max_epochs", "patience")



def fit_inputs(timecourse: TimeCourse, spec: CorpusSpec, seed: int) -> dict:
    """The data's fingerprint (size, hashes of gene names and cell times) and the options that shape the split."""
    genes = hashlib.sha256("\n".join(timecourse.gene_names()).encode()).hexdigest()
    times = hashlib.sha256(np.ascontiguousarray(timecourse.times, dtype=np.float64).tobytes()).hexdigest()
    return {
        "n_obs": int(timecourse.adata.n_obs), "n_vars": int(timecourse.adata.n_vars), "gene_names_sha256": genes,
        "times_sha256": times, "time_key": timecourse.time_key, "layer": timecourse.layer,
        "count_kind": timecourse.count_kind, "stratify": list(timecourse.stratify_keys), "task": spec.task,
        "holdout": spec.holdout, "seed": int(seed),
    }


def _describe_difference(key: str, then, now) -> str:
    """One clause of a refused resume: what differs, in the caller's words."""
    data_words = {"n_obs": "number of cells", "n_vars": "number of genes", "gene_names_sha256": "gene names",
                  "times_sha256": "cells' time values", "count_kind": "kind of values (counts or log-normalised)"}
    if key in data_words:
        shown = "" if key.endswith("sha256") else f" ({then} then, {now} now)"
        return f"the data's {data_words[key]} differ{shown}"
    return f"{option_name(key)} differs ({then} then, {now} now)"


def check_resume(run_dir: Path, inputs: dict, config: TraceConfig) -> None:
    """Refuse to continue a run on other data, split or config: its new epochs would train on what it held out.

    ``inputs``: this fit's :func:`fit_inputs`; ``config``: the config it would resume with.
    """
    differences = []
    saved_inputs = run_dir / INPUTS_FILE
    if saved_inputs.exists():
        try:
            saved = json.loads(saved_inputs.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SctraceInputError(f"{saved_inputs} is corrupt ({err}); start the fit again with "
                                    f"{option('overwrite', True)}.") from err
        differences += [_describe_difference(k, saved[k], v) for k, v in inputs.items() if k in saved and saved[k] != v]
    else:  # a run fitted before the fingerprint was saved: its corpus still records the split
        spec = CorpusSpec.from_json(run_dir / CORPUS_DIR / "corpus.json")
        for key in ("time_key", "task", "holdout"):
            if getattr(spec, key) != inputs[key]:
                differences.append(_describe_difference(key, getattr(spec, key), inputs[key]))
        warnings.warn(f"{run_dir} does not record the data it was fitted on ({INPUTS_FILE}); resuming without "
                      "checking that these are the same data.", UserWarning, stacklevel=3)
    if (run_dir / CONFIG_FILE).exists():
        then, now = TraceConfig.from_yaml(run_dir / CONFIG_FILE).flat(), config.flat()
        changed = [k for k in now if k not in _RESUMABLE_KEYS and then[k] != now[k]]
        if changed:
            shown = ", ".join(f"{k} ({then[k]!r} then, {now[k]!r} now)" for k in changed[:5])
            differences.append(f"config key(s) {shown} differ")
    if differences:
        raise SctraceInputError(
            f"cannot resume {run_dir}: {'; '.join(differences)}; resume with the data and options it was fitted "
            f"with, or start a new fit with {option('overwrite', True)} or another {option_name('run_dir')}."
        )


SCRATCH_PREFIX = "sctrace_corpus_"
SCRATCH_OWNER = "owner.txt"  # "host pid" of the process that uses a temporary corpus


def scratch_corpus_dir() -> str:
    """A temporary corpus folder that names its process; those of processes that died first are removed.

    A fit killed with SIGKILL cannot clean up after itself, so the next one does.
    """
    import socket

    remove_orphaned_corpora()
    path = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
    Path(path, SCRATCH_OWNER).write_text(f"{socket.gethostname()} {os.getpid()}")
    return path


def remove_orphaned_corpora() -> list[Path]:
    """Delete the temporary corpora (in the system temp dir) whose process on this machine no longer runs."""
    import socket

    removed = []
    for path in Path(tempfile.gettempdir()).glob(SCRATCH_PREFIX + "*"):
        try:
            host, pid = (path / SCRATCH_OWNER).read_text().split()
            if host == socket.gethostname():
                os.kill(int(pid), 0)  # raises ProcessLookupError once the process is gone
            continue  # alive, or another machine's: not ours to judge
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except (OSError, ValueError):
            continue  # no owner file (an older sctrace, or being created) or no permission to signal: leave it
    return removed


def is_rank_zero() -> bool:
    """False in the other processes of a multi-process run, which leave the run directory to rank 0.

    Lightning's subprocess launcher, torchrun and SLURM set the rank in the environment before our code runs,
    and Lightning reads it at import; a single process is rank 0.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def check_run_dir(run_dir: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse an unusable run directory before any expensive work (reading, tokenizing, training)."""
    run_dir = Path(run_dir)
    if not is_rank_zero():  # rank 0 may already have created it for this very run
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise SctraceInputError(f"{run_dir} is a file, not a run directory; choose another {option_name('run_dir')}.")
    if resume:
        last = run_dir / CHECKPOINT_DIR / "last.ckpt"
        if not last.exists():
            raise SctraceInputError(f"nothing to resume: {last} does not exist; fit without {option('resume', True)} first.")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise SctraceInputError(
                f"run directory {run_dir} already exists; pass {option('overwrite', True)} or choose another "
                f"{option_name('run_dir')}."
            )
        if not (run_dir / RUN_MARKER).exists():
            raise SctraceInputError(
                f"run directory {run_dir} holds files that sctrace did not write; refusing to overwrite it, choose "
                f"another {option_name('run_dir')}."
            )
    return run_dir


def remove_entries(directory: Path, names: Sequence[str]) -> None:
    """Delete the named files or folders of ``directory`` that exist, and nothing else."""
    for name in names:
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_run_dir(run_dir: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run directory, refusing to reuse one unless asked; never deletes files that are not ours."""
    run_dir = check_run_dir(run_dir, overwrite, resume)
    if not is_rank_zero():
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        remove_entries(run_dir, _OWN_ENTRIES)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text(json.dumps({"written_by": "sctrace", "format": RUN_FORMAT}))
    return run_dir


STAGING_SUFFIX = ".sctrace-staging"


def staging_dir(run_dir: str | os.PathLike) -> Path:
    """Beside ``run_dir``: where a fit or save that replaces a run writes, so the old run stays whole until the end.

    The name is fixed (not random) so that every process of a multi-process fit agrees on it. A symbolic link
    is followed, so the link keeps pointing at the run.
    """
    run_dir = Path(run_dir)
    run_dir = run_dir.resolve() if run_dir.is_symlink() else run_dir
    return run_dir.parent / f".{run_dir.name}{STAGING_SUFFIX}"


def stage_run_dir(run_dir: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """The directory to write a run into: ``run_dir`` itself, or a staging folder when it replaces a finished run.

    A kill while the new run is written then leaves the old one usable; :func:`swap_in_run` replaces it at the end.
    """
    run_dir = Path(run_dir)
    replaces = overwrite and not resume and run_dir.is_dir() and any(run_dir.iterdir())
    if not replaces:
        return prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
    check_run_dir(run_dir, overwrite=overwrite, resume=resume)
    staging = staging_dir(run_dir)
    if not is_rank_zero():
        return staging
    if staging.exists():
        if not (staging / RUN_MARKER).exists():
            raise SctraceInputError(
                f"{staging} holds files that sctrace did not write; remove it, or choose another {option_name('run_dir')}."
            )
        shutil.rmtree(staging)  # left by a fit that was killed before it finished
    staging.mkdir(parents=True)
    (staging / RUN_MARKER).write_text(json.dumps({"written_by": "sctrace", "format": RUN_FORMAT}))
    return staging


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_in_run(staging: Path, run_dir: Path) -> None:
    """Replace ``run_dir`` by the finished ``staging`` folder; files in it that sctrace did not write are kept."""
    if staging == run_dir:
        return
    run_dir = run_dir.resolve() if run_dir.is_symlink() else run_dir
    if _exchange(staging, run_dir):
        old = staging  # now holds the previous run
    else:
        old = run_dir.parent / f".{run_dir.name}.sctrace-old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(run_dir, old)
        os.replace(staging, run_dir)
    for entry in old.iterdir():
        if entry.name not in _OWN_ENTRIES:
            os.replace(entry, run_dir / entry.name)
    shutil.rmtree(old, ignore_errors=True)




def _discard_unfinished(root: Path, run_dir: Path, created: bool) -> None:
    """After a fit failed: drop its staging folder, or a run directory it created that holds no checkpoint yet.

    Either would only block the next fit; a run directory with a checkpoint stays, to be resumed.
    """
    if root != run_dir:
        shutil.rmtree(root, ignore_errors=True)
    elif created and not (root / CHECKPOINT_DIR / "last.ckpt").exists():
        remove_entries(root, _OWN_ENTRIES)
        with contextlib.suppress(OSError):
            root.rmdir()


def _check_checkpoint(path: Path, plan: torch.nn.Module) -> None:
    """Read a checkpoint to resume from safely (tensors and plain data only) and check it fits this model.

    Lightning then reads it again; a truncated, crafted or foreign file is refused here in one sentence.
    """
    fix = f"start the fit again with {option('overwrite', True)}"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, blocked pickle global, ...: all mean the file cannot be used
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise SctraceInputError(
            f"checkpoint {path} cannot be read as a plain checkpoint ({reason}); it is truncated, corrupt or not "
            f"written by sctrace: {fix}."
        ) from err
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    expected = plan.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected) or any(
        not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape for k, v in expected.items()
    ):
        raise SctraceInputError(f"checkpoint {path} does not hold the weights of this model: {fix}.")


def _check_config_keys(run_dir: Path) -> None:
    """A run's config.yaml must hold every key: a missing one would silently become another default."""
    import yaml

    try:
        marker = json.loads((run_dir / RUN_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        marker = {}
    raw = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}  # from_yaml has already parsed it
    keys = set(flatten_overrides(raw, str(run_dir / CONFIG_FILE)))  # format 4 nests the keys by section
    missing = [key for key in SECTION_OF if key not in keys]
    if not missing:
        return
    # An older config_version legitimately lacks the keys added after it, which its migration fills in: only a
    # key still missing after the migration means the file was damaged.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        migrated = migrate_run_config(raw, str(run_dir / CONFIG_FILE))
    lost = [key for key in missing if key not in migrated]
    if lost and isinstance(marker.get("format"), int) and marker["format"] >= RUN_FORMAT:
        shown = ", ".join(lost[:8]) + (f" (and {len(lost) - 8} more)" if len(lost) > 8 else "")
        raise SctraceInputError(
            f"run directory {run_dir} is corrupt: its {CONFIG_FILE} lacks the key(s) {shown}, which fit wrote; restore "
            "the file or re-run `sctrace fit`."
        )
    shown = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
    warnings.warn(f"{run_dir / CONFIG_FILE} predates the key(s) {shown}; they take the defaults that reproduce such "
                  "older runs.", UserWarning, stacklevel=3)
