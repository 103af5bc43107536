"""Command line: ``sctrace simulate | prepare | fit | predict | embed | demo | evaluate | benchmark | protocol | plot | impute |
extrapolation | analyze``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sctrace._cli_common import COUNT_KIND_HELP, PAIRING_HELP, TASK_HELP, simulated
from sctrace._errors import SctraceInputError, reset_cli_command, set_cli_command
from sctrace._threads import Threads
from sctrace._threads import set_threads as _set_threads
from sctrace.cli_harness import register as register_harness_commands

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="TRACE: predict single-cell expression at time points nobody measured.",
)

@app.callback()
def _interface(ctx: typer.Context) -> None:
    """Errors raised while a command runs name their fix as this command's options (sctrace._errors.option)."""
    token = set_cli_command(ctx.invoked_subcommand)
    ctx.call_on_close(lambda: reset_cli_command(token))


def _parse_time_map(pairs: list[str] | None) -> dict[str, float] | None:
    if not pairs:
        return None
    mapping = {}
    for item in pairs:
        label, sep, value = item.partition("=")
        if not sep:
            raise SctraceInputError(f"--time-map entries look like LABEL=VALUE (e.g. day2=2), got '{item}'.")
        try:
            mapping[label] = float(value)
        except ValueError as err:
            raise SctraceInputError(f"--time-map value for '{label}' must be a number, got '{value}'.") from err
    return mapping


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output .h5ad file.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    n_cells: Annotated[int, typer.Option(help="Number of cells (up to 1M).")] = 3000,
    n_genes: Annotated[int, typer.Option(help="Number of genes.")] = 1200,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write the built-in simulated time course (raw counts, obs: time, cell_type, donor)."""
    from sctrace.data.simulate import simulate_timecourse

    if out.exists() and not overwrite:
        raise SctraceInputError(f"{out} already exists; pass --overwrite or choose another --out.")
    adata = simulate_timecourse(n_cells=n_cells, n_genes=n_genes, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    times = ", ".join(f"{t:g}" for t in sorted(adata.obs["time"].unique()))
    typer.echo(f"wrote {adata.n_obs} cells x {adata.n_vars} genes, times {times} to {out}")


@app.command()
def prepare(
    data: Annotated[Optional[Path], typer.Argument(help=".h5ad file (default: the built-in simulator).")] = None,
    time_key: Annotated[str, typer.Option(help="obs column with the time.")] = "time",
    holdout: Annotated[Optional[str], typer.Option(help="Held-out time value.")] = None,
    task: Annotated[str, typer.Option(help=TASK_HELP)] = "auto",
    layer: Annotated[Optional[str], typer.Option(help="Layer with the expression (default X).")] = None,
    stratify: Annotated[Optional[list[str]], typer.Option(help="obs column(s) for stratified pairing.")] = None,
    pairing: Annotated[Optional[str], typer.Option(help=PAIRING_HELP)] = None,
    time_map: Annotated[Optional[list[str]], typer.Option(help="LABEL=VALUE for text time labels.")] = None,
    n_top_genes: Annotated[Optional[int], typer.Option(help="Highly variable genes (default: the preset's).")] = None,
    max_len: Annotated[Optional[int], typer.Option(help="Gene tokens per cell (default: the preset's).")] = None,
    genes: Annotated[Optional[str], typer.Option(help="Genes modelled: auto (every expressed gene up to 3,000, else hvg) | hvg (the "
                     "preset's number of most variable) | all (every expressed gene) | FILE (one gene name per line). "
                     "Default: auto.")] = None,
    count_kind: Annotated[str, typer.Option(help=COUNT_KIND_HELP)] = "auto",
    preset: Annotated[str, typer.Option(help="Preset whose data settings to use, as fit would.")] = "cpu-small",
    config: Annotated[Optional[Path], typer.Option(help="YAML file overriding the preset.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Threads = 1,
) -> None:
    """Run the data half of the pipeline (split, HVGs, tokenize, pair) and print a summary.

    HVGs, sentence length, pairing and likelihood default to the preset's (and ``--config``'s), so the summary
    describes the corpus that ``sctrace fit`` with the same preset would train on.
    """
    from sctrace.config import load_config
    from sctrace.data.corpus import prepare_corpus
    from sctrace.data.io import parse_time, read_h5ad, read_timecourse, resolve_count_kind
    from sctrace.data.pairing import check_pairing
    from sctrace.data.preprocess import read_gene_choice
    from sctrace.harness.report import corpus_summary

    _set_threads(threads)
    settings = load_config(preset, config, n_top_genes=n_top_genes, genes=genes, max_len=max_len)
    source = read_h5ad(data) if data is not None else simulated()
    kind, _ = resolve_count_kind(source, layer, count_kind, settings.counts.likelihood)  # as fit decides it
    timecourse = read_timecourse(
        source, time_key, layer=layer, stratify=stratify or (), time_map=_parse_time_map(time_map), count_kind=kind,
    )
    pairing = pairing or ("stratified" if stratify else settings.data.pairing)
    check_pairing(pairing, stratify)
    corpus = prepare_corpus(
        timecourse, task=task, holdout=None if holdout is None else parse_time(holdout),
        n_top_genes=settings.data.n_top_genes, genes=read_gene_choice(settings.data.genes), max_len=settings.data.max_len,
        pairing=pairing, seed=seed, min_rows=settings.data.min_rows, val_fraction=settings.training.val_fraction,
    )
    typer.echo(corpus_summary(timecourse, corpus, pairing))


@app.command()
def fit(
    data: Annotated[Path, typer.Argument(help=".h5ad file with raw counts or log-normalised values.")],
    out: Annotated[Path, typer.Option(help="Run directory to create.")],
    time_key: Annotated[str, typer.Option(help="obs column with the time.")] = "time",
    holdout: Annotated[Optional[str], typer.Option(help="Held-out time value (not seen in training).")] = None,
    task: Annotated[str, typer.Option(help=TASK_HELP)] = "auto",
    preset: Annotated[str, typer.Option(help="Hyper-parameter preset.")] = "cpu-small",
    config: Annotated[Optional[Path], typer.Option(help="YAML file overriding the preset.")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="Training epochs (overrides the preset).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    stratify: Annotated[Optional[list[str]], typer.Option(help="obs column(s) for stratified pairing.")] = None,
    pairing: Annotated[Optional[str], typer.Option(help=PAIRING_HELP)] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer with the expression (default X).")] = None,
    time_map: Annotated[Optional[list[str]], typer.Option(help="LABEL=VALUE for text time labels.")] = None,
    count_kind: Annotated[str, typer.Option(help=COUNT_KIND_HELP)] = "auto",
    likelihood: Annotated[Optional[str], typer.Option(
        help="auto (zinb for raw counts, hurdle for log-normalised data) | zinb | nb (raw counts) | hurdle | "
             "gaussian (log-normalised data; hurdle models its exact zeros). Default: the preset's (auto).")] = None,
    genes: Annotated[Optional[str], typer.Option(help="Genes modelled: auto (every expressed gene up to 3,000, else hvg) | hvg (the "
                     "preset's number of most variable) | all (every expressed gene) | FILE (one gene name per line). "
                     "Default: auto.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous sctrace run in --out.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from --out/checkpoints/last.ckpt.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    threads: Threads = 1,
    accelerator: Annotated[str, typer.Option(help="Lightning accelerator: auto | cpu | gpu.")] = "auto",
    devices: Annotated[str, typer.Option(help="Processes (devices) per node, or 'auto'; >1 trains data-parallel.")] = "1",
    num_nodes: Annotated[int, typer.Option(help="Machines in a multi-node run (launched by torchrun or SLURM).")] = 1,
    strategy: Annotated[str, typer.Option(help="Lightning strategy: auto | ddp | ddp_spawn | ...")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on a GPU, fp32 on CPU) | 32-true | bf16-mixed.")] = "auto",
    encoder: Annotated[Optional[str], typer.Option(help="Source encoder: scratch | random (frozen at initialisation, a control) | geneformer (pretrained, local).")] = None,
    encoder_path: Annotated[Optional[Path], typer.Option(help="Directory of the pretrained encoder: config.json, "
                            "model.safetensors, token_dictionary.{json,csv,pkl}, gene medians.")] = None,
    encoder_mode: Annotated[Optional[str], typer.Option(help="frozen | finetune (pretrained encoder only).")] = None,
    calibrate_extrapolation: Annotated[Optional[bool], typer.Option(
        help="Measure how far past the last training time predictions should move, with one more fit without that "
             "time (default: when the task is extrapolate).")] = None,
) -> None:
    """Train TRACE on every time point but the held-out one; write a run directory."""
    from sctrace.estimator import TRACE, check_run_dir

    _set_threads(threads)
    check_run_dir(out, overwrite=overwrite, resume=resume)
    model = TRACE(
        data, time_key, task=task, holdout=holdout, layer=layer, time_map=_parse_time_map(time_map),
        stratify=stratify or (), count_kind=count_kind, preset=preset, config=config, seed=seed,
        **({"likelihood": likelihood} if likelihood else {}),
        **({"pairing": pairing} if pairing else {}),
        **({"genes": genes} if genes else {}),
        **({"encoder": encoder} if encoder else {}),
        **({"encoder_path": str(encoder_path)} if encoder_path else {}),
        **({"encoder_mode": encoder_mode} if encoder_mode else {}),
    )
    typer.echo(repr(model))
    model.fit(
        max_epochs=max_epochs, run_dir=out, overwrite=overwrite, resume=resume, progress=progress,
        accelerator=accelerator, devices=int(devices) if devices.isdigit() else devices, num_nodes=num_nodes,
        strategy=strategy, precision=precision, calibrate_extrapolation=calibrate_extrapolation,
    )
    if model.extrapolation is not None:
        typer.echo(f"extrapolation step {model.extrapolation['step']:g} (calibrated on the training times)")
    typer.echo(f"saved the trained model to {out}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `sctrace fit`.")],
    time: Annotated[str, typer.Option(help="Real time value to generate cells at.")],
    out: Annotated[Path, typer.Option(help="Output .h5ad.")],
    n_cells: Annotated[Optional[int], typer.Option(help="Cells to generate (default: one per source cell).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    library_size: Annotated[Optional[float], typer.Option(
        help="Depth (total counts over the model's genes) of every generated cell; default: drawn from the "
             "neighbouring observed times.")] = None,
    sampling: Annotated[Optional[str], typer.Option(
        help="iid | stratified | copula: how values are drawn from the count decoder (copula: genes co-vary as in "
             "the training cells of the nearest times; default: the run's count_sampling).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    threads: Threads = 1,
) -> None:
    """Generate cells at any time value and write them (counts, embeddings, token sentences) to .h5ad."""
    from sctrace.estimator import TRACE

    _set_threads(threads)
    _check_out_file(out, overwrite)
    model = TRACE.load(run_dir)
    generated = model.predict(time, n_cells=n_cells, seed=seed, library_size=library_size, sampling=sampling)
    _write_h5ad(generated, out, overwrite)
    typer.echo(f"wrote {generated.n_obs} generated cells at time {generated.uns['sctrace']['time']:g} to {out}")


@app.command()
def embed(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `sctrace fit`.")],
    data: Annotated[Path, typer.Argument(help=".h5ad with the model's genes.")],
    out: Annotated[Path, typer.Option(help="Output .h5ad (obsm['X_sctrace'], varm['sctrace_genes']).")],
    time_key: Annotated[Optional[str], typer.Option(help="obs column with the time (default: the model's).")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer with the expression (default X).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    threads: Threads = 1,
) -> None:
    """Write cell and gene embeddings for any AnnData with the model's genes."""
    from sctrace.estimator import TRACE

    _set_threads(threads)
    _check_out_file(out, overwrite)
    embedded = TRACE.load(run_dir).embed(data, time_key=time_key, layer=layer)
    _write_h5ad(embedded, out, overwrite)
    typer.echo(f"wrote embeddings of {embedded.n_obs} cells to {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder for the table, metrics and plot.")] = Path("sctrace_demo"),
    seed: Annotated[int, typer.Option()] = 0,
    max_epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the cpu-small preset).")] = None,
    threads: Threads = 1,
) -> None:
    """Simulate, fit an interpolation model, predict the held-out time and score it against the floors."""
    from sctrace.demo import run_demo

    _set_threads(threads)
    run_demo(out, seed=seed, max_epochs=max_epochs, echo=typer.echo)


def _check_out_file(out: Path, overwrite: bool) -> None:
    """Refuse an unusable --out before any work; _write_h5ad checks again when it writes."""
    if out.is_dir():
        raise SctraceInputError(f"--out {out} is a directory; give a file path such as {out / 'cells.h5ad'}.")
    if out.exists() and not overwrite:
        raise SctraceInputError(f"{out} already exists; pass --overwrite or choose another --out.")


def _write_h5ad(adata, out: Path, overwrite: bool = False) -> None:
    """Write through a temporary file of its own, then create ``out`` in one step.

    An interrupted write never leaves a truncated result, two commands writing the same ``out`` never share a
    temporary file, and without ``overwrite`` a file that appeared at ``out`` meanwhile is never replaced.
    """
    import os
    import tempfile

    if out.is_dir():
        raise SctraceInputError(f"--out {out} is a directory; give a file path such as {out / 'cells.h5ad'}.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as err:
        raise SctraceInputError(f"cannot write to {out.parent} ({err.strerror}); choose another --out.") from err
    os.close(handle)
    tmp = Path(name)
    try:
        adata.write_h5ad(tmp)
        if overwrite:
            tmp.replace(out)
            return
        try:
            try:
                os.link(tmp, out)  # fails if out exists: exclusive creation, unlike a rename
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: claim the name exclusively, then fill it
                with open(out, "xb"):
                    pass
                tmp.replace(out)
        except FileExistsError:
            raise SctraceInputError(
                f"{out} was written by another command while this one ran; pass --overwrite or choose another --out."
            ) from None
    finally:
        tmp.unlink(missing_ok=True)




# The evaluation commands (sctrace.cli_harness), after this module's own so `--help` lists the method first.
register_harness_commands(app)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning:`` line, as errors are one ``error:`` line."""
    typer.echo(f"warning: {message}", err=True)


def main() -> None:
    import warnings

    warnings.showwarning = _show_warning
    try:
        app()
    except SctraceInputError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
