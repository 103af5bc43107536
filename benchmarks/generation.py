"""Generation speed of MaskGIT decoding against R decoder forwards on the same batch (run on demand).

    .venv/bin/python benchmarks/generation.py                          # cpu-small and eb, 1 and 2 threads
    .venv/bin/python benchmarks/generation.py --preset eb --batch-size 8 --threads 1

``sctrace.generate.maskgit_generate`` generates a batch of cells at the full ``max_len`` from a source cell and
``--n-context`` context cells (the observed time points other than the source, as ``TRACE.predict`` passes
them), with the preset's ``n_iter`` (R) and temperature, on an untrained network of the preset's shapes (speed
does not depend on the weights). The reference is one decoder forward to logits, ``token_head(decode(...))``,
on the same batch at the same full length against the same memory, timed on its own. Every timing is the
fastest of a few repeats (other jobs share this machine).

Printed: generated cells/s; ``ratio = generation time / (R x reference)``, the target being <= 1.2, by wall
clock and by CPU time (the machine is shared: CPU time does not count waits for a busy core). Generation
projects the memory's cross-attention keys and values once per batch, so the ratio is also given against a
forward that does the same (what each iteration costs at least), and against ``decode()`` without the token
head. Last, where the CPU time beyond R such forwards goes: the encoder, context passes and memory projection
(once per batch), the final decoder pass that gives the [CLS] state, extra rounds that re-draw positions which
lost an in-step duplicate at the last scheduled step, and the per-iteration sampling work (masking, softmax,
draws, duplicate resolution) as the remainder (negative when an iteration's token head, on masked positions
only, costs less than the reference's, which covers every position).
"""

from __future__ import annotations

import argparse
import math
import time
from types import SimpleNamespace

import torch

from sctrace.config import DEFAULT_PRESET, load_config
from sctrace.data.tokenize import CLS_ID, MASK_ID, N_SPECIAL
from sctrace.generate import maskgit_generate
from sctrace.model.module import TraceNet
from sctrace.network import build_net


def random_sentences(batch: int, max_len: int, n_genes: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, max_len + 1) sentences of distinct genes with [CLS] first."""
    genes = torch.rand(batch, n_genes, generator=generator).argsort(dim=1)[:, :max_len] + N_SPECIAL
    return torch.cat([torch.full((batch, 1), CLS_ID, dtype=torch.long), genes], dim=1)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Fastest of ``repeats`` calls, in wall and CPU seconds: on a shared machine the fastest is the one that
    other jobs disturbed least."""
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


PREDICT_BATCH = 128  # TRACE.predict's default
CPU_BATCH = 8
"""Batch of the paper-sized presets on CPU: 128 ``eb`` cells x 20 forwards is ~30 TFLOP, many minutes on two cores."""


@torch.no_grad()
def run_preset(preset: str, threads: int, args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(threads)
    config = load_config(preset)
    batch = args.batch_size or (PREDICT_BATCH if preset == DEFAULT_PRESET else CPU_BATCH)
    n_times = args.n_context + 1
    spec = SimpleNamespace(vocab_size=args.n_genes + N_SPECIAL, n_genes=args.n_genes, max_len=config.data.max_len,
                           time_values=[float(t) for t in range(n_times)])
    torch.manual_seed(0)
    net: TraceNet = build_net(spec, config).eval()
    generator = torch.Generator().manual_seed(1)
    source = random_sentences(batch, config.data.max_len, args.n_genes, generator)
    context = [(random_sentences(batch, config.data.max_len, args.n_genes, generator), float(k)) for k in range(1, n_times)]
    target_time = n_times - 1.5  # between the last two observed times, as when interpolating
    lengths = torch.full((batch,), config.data.max_len, dtype=torch.long)

    iterations = []
    hook = net.token_head.register_forward_hook(lambda module, inputs, output: iterations.append(1))

    def generate() -> None:
        iterations.clear()
        maskgit_generate(
            net, source, 0.0, context, target_time, lengths, n_iter=config.generation.n_iter,
            temperature=config.generation.temperature,
            schedule=config.training.mask_schedule, generator=torch.Generator().manual_seed(2),
        )

    z0, z0_pad = net.encode(source, 0.0)
    memory, memory_pad = net.build_context(z0, z0_pad, context)
    all_masked = torch.full_like(source, MASK_ID)
    all_masked[:, 0] = CLS_ID

    memory_kv = net.decoder.project_memory(memory)

    def references() -> dict[str, tuple[float, float]]:
        return {
            "forward": timed(lambda: net.token_head(net.decode(all_masked, target_time, memory, memory_pad)), args.repeats),
            "forward_projected": timed(
                lambda: net.token_head(net.decode(all_masked, target_time, memory, memory_pad, memory_kv)), args.repeats
            ),
            "decoder": timed(lambda: net.decode(all_masked, target_time, memory, memory_pad), args.repeats),
            "encode_context": timed(
                lambda: net.decoder.project_memory(net.build_context(*net.encode(source, 0.0), context)[0]), args.repeats
            ),
        }

    generate()  # warm-up
    before = references()
    seconds = timed(generate, args.generation_repeats)
    n_forwards = len(iterations)
    hook.remove()
    after = references()  # before and after, the faster kept: a busy spell on the machine lowers neither
    reference = {key: tuple(min(b, a) for b, a in zip(before[key], after[key])) for key in before}

    r = config.generation.n_iter
    result = {"preset": preset, "threads": threads, "batch": batch, "length": config.data.max_len, "R": r,
              "forwards": n_forwards, "seconds": seconds[0], "cpu_seconds": seconds[1], "cells_per_s": batch / seconds[0]}
    for clock, c in (("wall", 0), ("cpu", 1)):
        result[f"ratio_{clock}"] = seconds[c] / (r * reference["forward"][c])
        result[f"ratio_projected_{clock}"] = seconds[c] / (r * reference["forward_projected"][c])
        result[f"ratio_decoder_only_{clock}"] = seconds[c] / (r * reference["decoder"][c])
    # Where CPU time beyond R forwards (as generation runs them) goes; CPU time is not inflated by waits for a
    # busy core.
    cpu_total, step = seconds[1], reference["forward_projected"][1]
    shares = {
        "encoder + context": reference["encode_context"][1] / cpu_total,
        "final [CLS] pass": reference["decoder"][1] / cpu_total,
        f"{n_forwards - r} extra forward(s)": (n_forwards - r) * step / cpu_total,
    }
    shares["the rest (sampling, masking)"] = 1 - r * step / cpu_total - sum(shares.values())
    result.update({f"share {k}": v for k, v in shares.items()})
    print(
        f"{preset:>10} threads={threads} batch={batch} length={config.data.max_len} R={r} ({n_forwards} forwards run): "
        f"{seconds[0]:.2f} s ({seconds[1]:.2f} s CPU), {result['cells_per_s']:.2f} cells/s | one forward to logits "
        f"{reference['forward'][0]:.3f} s ({reference['forward'][1]:.3f} s CPU) | ratio {result['ratio_wall']:.3f} wall, "
        f"{result['ratio_cpu']:.3f} CPU (to a forward with the memory projected once: {result['ratio_projected_wall']:.3f}, "
        f"{result['ratio_projected_cpu']:.3f}; to decode() alone: {result['ratio_decoder_only_wall']:.3f}, "
        f"{result['ratio_decoder_only_cpu']:.3f}) | of the CPU time: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()),
        flush=True,
    )
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["cpu-small", "eb"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads; each value is a run")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"cells per batch (default {PREDICT_BATCH}, predict's; {CPU_BATCH} for presets other than {DEFAULT_PRESET})")
    parser.add_argument("--n-context", type=int, default=3, help="context time points (observed times but the source)")
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="timings of each reference (the fastest is kept)")
    parser.add_argument("--generation-repeats", type=int, default=2, help="timings of generation (the fastest is kept)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for preset in args.preset:
        for threads in args.threads:
            run_preset(preset, threads, args)


if __name__ == "__main__":
    main()
