"""The evaluation commands (evaluate, benchmark, protocol, plot, impute, extrapolation, analyze): each imports the
harness when it runs, so `sctrace fit` never loads it. :func:`register` adds them to the CLI's app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sctrace._cli_common import COUNT_KIND_HELP, PAIRING_HELP, parse_list, parse_seeds, simulated
from sctrace._errors import SctraceInputError
from sctrace._threads import Threads
from sctrace._threads import set_threads as _set_threads


def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted cells (.h5ad written by `sctrace predict`).")],
    data: Annotated[Path, typer.Argument(help="Real cells (.h5ad) with every gene of the prediction.")],
    time: Annotated[str, typer.Option(help="Time point of DATA to score against.")],
    time_key: Annotated[str, typer.Option(help="obs column of DATA with the time.")] = "time",
    out: Annotated[Optional[Path], typer.Option(help="Write the scores as JSON here (e.g. metrics.json).")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer of DATA with the expression (default X).")] = None,
    run: Annotated[Optional[Path], typer.Option(help="Run directory that made PRED: its gene medians tokenize the "
                                                "real cells, which ROUGE needs (skipped without it).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the MMD subsample and the ROUGE pairing.")] = 0,
    threads: Threads = 1,
) -> None:
    """Score predicted cells against the real cells at one time (MMD, EMD, E-distance, Pearson, R², ROUGE)."""
    from sctrace.harness.evaluate import evaluate_prediction, format_evaluation, write_json

    _set_threads(threads)
    result = evaluate_prediction(pred, data, time_key, time, layer=layer, run_dir=run, seed=seed)
    typer.echo(format_evaluation(result))
    if out is not None:
        typer.echo(f"wrote {write_json(result, out)}")


def benchmark(
    data: Annotated[Path, typer.Argument(help=".h5ad file with raw counts (or log-normalised, see --count-kind).")],
    holdout: Annotated[str, typer.Option(help="Held-out time value.")],
    out: Annotated[Path, typer.Option(help="Output folder (results.json, results.md, plots/, runs/, work/).")],
    time_key: Annotated[str, typer.Option(help="obs column with the time.")] = "time",
    task: Annotated[str, typer.Option(help="auto (extrapolate for the last observed time, else interpolate) | "
                                           "interpolate | extrapolate")] = "auto",
    methods: Annotated[str, typer.Option(help="Comma-separated: sctrace,identity,mixture,linear,otcfm,mioflow.")] = "sctrace,identity,mixture,linear,otcfm",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; every method runs once per seed.")] = "0,1,2",
    preset: Annotated[str, typer.Option(help="sctrace hyper-parameter preset.")] = "cpu-small",
    config: Annotated[Optional[Path], typer.Option(help="YAML file overriding the preset.")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="sctrace training epochs.")] = None,
    pairing: Annotated[Optional[str], typer.Option(help=PAIRING_HELP)] = None,
    likelihood: Annotated[Optional[str], typer.Option(
        help="sctrace's likelihood (default: the preset's, auto: zinb for counts, hurdle for log-normalised).")] = None,
    count_kind: Annotated[str, typer.Option(help=COUNT_KIND_HELP)] = "auto",
    layer: Annotated[Optional[str], typer.Option(help="Layer with the expression (default X).")] = None,
    ablate: Annotated[Optional[str], typer.Option(
        help="Vary sctrace: schedule | pos-encoding | iterations | length | encoder.")] = None,
    encoder_path: Annotated[Optional[Path], typer.Option(
        help="With --ablate encoder: a local Geneformer-format model, adding the pretrained rows (frozen, fine-tuned).")] = None,
    otcfm_steps: Annotated[Optional[int], typer.Option(help="OT-CFM training steps (default 1000).")] = None,
    mioflow_epochs: Annotated[Optional[int], typer.Option(help="MIOFlow training epochs (default 100).")] = None,
    genes: Annotated[Optional[str], typer.Option(help="Genes modelled and scored: auto | hvg | all | FILE (one gene name "
                     "per line), as for fit. Default: auto.")] = None,
    plots: Annotated[bool, typer.Option(help="Write plots to OUT/plots.")] = True,
    layout: Annotated[str, typer.Option(help="umap | pca for the embedding map (UMAP compiles ~30 s first).")] = "umap",
    overwrite: Annotated[bool, typer.Option(help="Replace earlier results in --out.")] = False,
    threads: Threads = 1,
) -> None:
    """Run every method on the same split, each seed in a fresh process; score all on the held-out cells."""
    from sctrace.harness.benchmark import run_benchmark

    seed_values = parse_seeds(seeds)
    _set_threads(threads)
    results = run_benchmark(
        data, time_key, task=task, holdout=holdout, out_dir=out, methods=parse_list(methods, "methods"),
        seeds=seed_values, preset=preset, config=config, max_epochs=max_epochs, count_kind=count_kind, layer=layer,
        ablate=ablate, encoder_path=encoder_path, otcfm_settings=None if otcfm_steps is None else {"n_steps": otcfm_steps},
        mioflow_settings=None if mioflow_epochs is None else {"n_epochs": mioflow_epochs}, threads=threads,
        sctrace_overrides={k: v for k, v in (("pairing", pairing), ("likelihood", likelihood), ("genes", genes))
                           if v is not None},
        overwrite=overwrite, plots=plots, embedding_layout=layout, echo=typer.echo,
    )
    failed = [name for name, entry in results["methods"].items() if entry.get("failed")]
    if failed:
        typer.echo(f"error: {', '.join(failed)} failed; see {out / 'results.md'}.", err=True)
        raise typer.Exit(1)


def protocol(
    data: Annotated[Path, typer.Argument(help=".h5ad time course (counts, log-normalised, or FPKM/TPM-like values).")],
    out: Annotated[Path, typer.Option(help="Output folder (protocol.md, protocol.json, splits/); finished splits in "
                                      "it are kept and not run again.")],
    time_key: Annotated[str, typer.Option(help="obs column with the time.")] = "time",
    methods: Annotated[str, typer.Option(help="Comma-separated: sctrace,identity,mixture,linear,otcfm,mioflow.")] = "sctrace,identity,mixture,linear,otcfm,mioflow",
    profile: Annotated[str, typer.Option(help="quick (seed 0, for iterating) | full (seeds 0,1,2, for the record).")] = "quick",
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds (default: the profile's).")] = None,
    times: Annotated[Optional[str], typer.Option(help="Comma-separated held-out times to run (default: every split).")] = None,
    rerun: Annotated[Optional[str], typer.Option(help="Comma-separated methods to fit again on finished splits.")] = None,
    count_kind: Annotated[str, typer.Option(help="auto | counts | lognorm | values (FPKM/TPM, read as log1p).")] = "auto",
    layer: Annotated[Optional[str], typer.Option(help="Layer with the expression (default X).")] = None,
    preset: Annotated[str, typer.Option(help="sctrace hyper-parameter preset.")] = "cpu-small",
    config: Annotated[Optional[Path], typer.Option(help="YAML file overriding the preset.")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="sctrace training epochs (default: the preset's).")] = None,
    otcfm_steps: Annotated[Optional[int], typer.Option(help="OT-CFM training steps (default 1000).")] = None,
    mioflow_epochs: Annotated[Optional[int], typer.Option(help="MIOFlow training epochs (default 100).")] = None,
    genes: Annotated[Optional[str], typer.Option(help="Genes modelled and scored: auto | hvg | all | FILE (one gene name "
                     "per line), as for fit. Default: auto.")] = None,
    run: Annotated[bool, typer.Option(help="--no-run: fit nothing, summarise the splits already finished in --out.")] = True,
    threads: Threads = 1,
) -> None:
    """Leave one time out: every interior time interpolated, the last extrapolated, every method; one summary."""
    from sctrace.data.io import parse_time
    from sctrace.harness.protocol import run_protocol

    def numbers(text: str | None, what: str, kind=float):
        if text is None:
            return None
        try:
            return [kind(item) for item in parse_list(text, what)]
        except ValueError as err:
            raise SctraceInputError(f"--{what} must be comma-separated numbers, got '{text}'.") from err

    _set_threads(threads)
    run_protocol(
        data, time_key, out_dir=out, methods=parse_list(methods, "methods"), profile=profile,
        seeds=numbers(seeds, "seeds", int), times=numbers(times, "times", parse_time),
        rerun=parse_list(rerun, "rerun") if rerun else (), count_kind=count_kind, layer=layer, preset=preset,
        config=config, max_epochs=max_epochs, otcfm_steps=otcfm_steps, mioflow_epochs=mioflow_epochs, threads=threads,
        sctrace_overrides={"genes": genes} if genes else None, run=run, echo=typer.echo,
    )
    typer.echo(f"wrote {out / 'protocol.md'} and {out / 'protocol.json'}")


def plot(
    pred: Annotated[Path, typer.Argument(help="Predicted cells (.h5ad written by `sctrace predict`), or the --out "
                                         "folder of `sctrace benchmark` to draw its plots again.")],
    data: Annotated[Optional[Path], typer.Argument(help="Real cells (.h5ad) with every gene of the prediction "
                                                   "(for a benchmark folder: only if its data file moved).")] = None,
    time: Annotated[Optional[str], typer.Option(help="Time point of DATA the prediction stands for.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder for the PNG files (benchmark folder: "
                                                "default its plots/).")] = None,
    time_key: Annotated[str, typer.Option(help="obs column of DATA with the time.")] = "time",
    run: Annotated[Optional[Path], typer.Option(help="Run directory that made PRED: embeds the real cells too and "
                                                "adds the cell-gene dot plot.")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer of DATA with the expression (default X).")] = None,
    layout: Annotated[str, typer.Option(help="umap | pca for the embedding map (UMAP compiles ~30 s first).")] = "umap",
    threads: Threads = 1,
) -> None:
    """PCA, cell-type PCA, violins of time-variable genes, embedding map and dot plot of a prediction."""
    _set_threads(threads)
    if pred.is_dir():
        from sctrace.harness.benchmark import plot_benchmark

        written = plot_benchmark(pred, out, data=data, layout=layout)
        typer.echo("wrote " + ", ".join(str(path) for path in written))
        return
    if data is None or time is None or out is None:
        missing = [name for name, value in (("DATA", data), ("--time", time), ("--out", out)) if value is None]
        raise SctraceInputError(f"plotting a prediction file needs {', '.join(missing)}: sctrace plot PRED.h5ad DATA.h5ad "
                                "--time T --out DIR.")
    from sctrace.harness.plots import plot_prediction

    written = plot_prediction(pred, data, time_key, time, out, run_dir=run, layer=layer, layout=layout)
    typer.echo("wrote " + ", ".join(str(path) for path in written))


def impute_command(
    out: Annotated[Path, typer.Option(help="Output folder (imputation.md/.json, split.csv, plots/, runs/, work/).")],
    data: Annotated[Optional[Path], typer.Argument(help=".h5ad file with raw counts (default: the built-in simulator).")] = None,
    time_key: Annotated[str, typer.Option(help="obs column with the time.")] = "time",
    seed: Annotated[int, typer.Option(help="Seed of the split, the training and the generation.")] = 0,
    test_fraction: Annotated[float, typer.Option(help="Fraction of each time point held out.")] = 0.2,
    stratify: Annotated[Optional[str], typer.Option(help="obs column to split within (default: cell_type if present).")] = None,
    n_cells: Annotated[Optional[int], typer.Option(help="Cells per method and time (default: the held-out count).")] = None,
    preset: Annotated[str, typer.Option(help="sctrace hyper-parameter preset.")] = "cpu-small",
    config: Annotated[Optional[Path], typer.Option(help="YAML file overriding the preset.")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="sctrace training epochs.")] = None,
    plots: Annotated[bool, typer.Option(help="Write plots to OUT/plots.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace earlier results in --out.")] = False,
    threads: Threads = 1,
) -> None:
    """Hold out a fraction of every time point, train on the rest, impute the held-out cells and score them."""
    from sctrace.harness.experiments import run_imputation

    run_imputation(data if data is not None else simulated(), time_key, out_dir=out, seed=seed, test_fraction=test_fraction,
                   stratify_key=stratify, n_cells=n_cells, preset=preset, config=config, max_epochs=max_epochs,
                   threads=threads, overwrite=overwrite, plots=plots, echo=typer.echo)
    typer.echo(f"wrote {out / 'imputation.md'} and {out / 'imputation.json'}")


def extrapolation_command(
    train_steps: Annotated[int, typer.Option(help="Train on this many leading time points; predict each later one.")],
    out: Annotated[Path, typer.Option(help="Output folder (extrapolation.md/.json, plots/, runs/, work/).")],
    data: Annotated[Optional[Path], typer.Argument(help=".h5ad file with raw counts (default: the built-in simulator).")] = None,
    time_key: Annotated[str, typer.Option(help="obs column with the time.")] = "time",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; every method is fitted once per seed.")] = "0",
    methods: Annotated[str, typer.Option(help="Comma-separated: sctrace,identity,otcfm,mioflow (linear only interpolates).")] = "sctrace,identity",
    preset: Annotated[str, typer.Option(help="sctrace hyper-parameter preset.")] = "cpu-small",
    config: Annotated[Optional[Path], typer.Option(help="YAML file overriding the preset.")] = None,
    max_epochs: Annotated[Optional[int], typer.Option(help="sctrace training epochs.")] = None,
    otcfm_steps: Annotated[Optional[int], typer.Option(help="OT-CFM training steps (default 1000).")] = None,
    mioflow_epochs: Annotated[Optional[int], typer.Option(help="MIOFlow training epochs (default 100).")] = None,
    plots: Annotated[bool, typer.Option(help="Write plots to OUT/plots.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace earlier results in --out.")] = False,
    threads: Threads = 1,
) -> None:
    """Train on the first K time points, predict each later one, and report the metrics against the distance."""
    from sctrace.harness.experiments import run_extrapolation_distance

    seed_values = parse_seeds(seeds)
    run_extrapolation_distance(
        data if data is not None else simulated(), time_key, k=train_steps, out_dir=out, seeds=seed_values,
        methods=parse_list(methods, "methods"), preset=preset, config=config, max_epochs=max_epochs,
        otcfm_settings=None if otcfm_steps is None else {"n_steps": otcfm_steps},
        mioflow_settings=None if mioflow_epochs is None else {"n_epochs": mioflow_epochs}, threads=threads,
        overwrite=overwrite, plots=plots, echo=typer.echo,
    )
    typer.echo(f"wrote {out / 'extrapolation.md'}, {out / 'extrapolation.json'} and {out / 'plots'}")


def register(app: typer.Typer) -> None:
    """Add the evaluation commands to ``app``, in the order `sctrace --help` lists them."""
    for command in (evaluate, benchmark, protocol, plot):
        app.command()(command)
    app.command("impute")(impute_command)
    app.command("extrapolation")(extrapolation_command)
    # The command lives beside its analysis; that module imports only numpy, pandas and typer at load time.
    from sctrace.harness.embedding_analysis import analyze_command

    app.command("analyze")(analyze_command)
