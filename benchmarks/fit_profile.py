"""Where a fit's time goes: `python benchmarks/fit_profile.py DATA TIME_KEY HOLDOUT [--likelihood hurdle]`.

Times the stages of one TRACE fit + predict at one thread (reading and preparing the corpus, training, generating)
and prints the largest cumulative entries of a cProfile of the training stage, so that "the fit is slow" can be
pinned on data preparation, the training loop's overhead or the model's arithmetic.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("time_key")
    parser.add_argument("holdout", type=float)
    parser.add_argument("--likelihood", default=None)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sctrace.estimator import TRACE

    overrides = {} if args.likelihood is None else {"likelihood": args.likelihood}
    started = time.perf_counter()
    model = TRACE(args.data, args.time_key, holdout=args.holdout, seed=0, **overrides)
    prepared = time.perf_counter()
    profiler = cProfile.Profile()
    profiler.enable()
    model.fit(progress=False)
    profiler.disable()
    trained = time.perf_counter()
    model.predict(args.holdout, seed=0)
    predicted = time.perf_counter()
    steps = int(model.history["step"].max()) + 1
    print(f"prepare {prepared - started:.1f} s | fit {trained - prepared:.1f} s ({steps} steps, "
          f"{steps / (trained - prepared):.1f} steps/s) | predict {predicted - trained:.1f} s")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(args.top)
    print(text.getvalue())


if __name__ == "__main__":
    main()
