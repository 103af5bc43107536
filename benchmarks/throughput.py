"""Training throughput of TraceNet against this machine's dense fp32 matmul speed (run on demand).

    .venv/bin/python benchmarks/throughput.py                          # cpu-small and eb, 1 and 2 threads
    .venv/bin/python benchmarks/throughput.py --preset eb --threads 1 --batch-size 8 --steps 3
    .venv/bin/python benchmarks/throughput.py --preset eb --profile    # + torch.profiler's top operators

One training step is ``TraceNet.training_losses`` + backward + gradient clipping + AdamW, exactly as the
Lightning plan does it but without Lightning, so only the model is timed. The corpus is synthetic and has the
preset's shapes: ``--n-times`` time points (source + targets), every cell a full ``max_len`` sentence of
distinct genes (no padding), ``--n-genes`` genes, Poisson counts around log-normal gene means. Presets other
than cpu-small run at batch 8 on CPU unless ``--batch-size`` says otherwise.

FLOPs per example are counted from the model's shapes (:func:`training_flops`): every matmul of the encoder,
of the no-grad context passes (forward only), of the masked target pass, of the token head on the masked
positions (expected number under the mask schedule) and of the count decoder; attention counts
``Q K^T`` and ``A V``; a pass with gradient costs 3x its forward (backward = 2x). Elementwise work
(softmax, LayerNorm, GELU, the likelihood) is not counted, as is the convention. The first step of each run
is also counted by ``torch.utils.flop_counter.FlopCounterMode`` and printed beside the analytic count, as a
check on the formula. The achieved FLOP/s is divided by ``torch.matmul`` FLOP/s on a square fp32 matrix
(bf16 on GPU), timed in the same run with the same thread count before and after the steps.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sctrace.config import DEFAULT_PRESET, TraceConfig, load_config
from sctrace.data.tokenize import CLS_ID, N_SPECIAL
from sctrace.model.masking import mask_ratio
from sctrace.model.module import TraceNet
from sctrace.network import build_net
from sctrace.train import GRADIENT_CLIP, TracePlan


# ---------------------------------------------------------------------------------------------- FLOP count
@dataclass(frozen=True)
class Shapes:
    """What the FLOP count needs to know about a model and a batch."""

    d_model: int
    inner: int  # n_heads * head_dim
    n_encoder_layers: int
    n_decoder_layers: int
    vocab_size: int
    n_genes: int
    count_hidden: int
    likelihood: str
    length: int  # tokens per sentence, [CLS] included
    n_times: int  # source + targets

    @classmethod
    def of(cls, net: TraceNet, length: int, n_times: int) -> Shapes:
        attn = net.encoder.layers[0].attn
        return cls(
            d_model=net.token_head.in_features,
            inner=attn.n_heads * attn.head_dim,
            n_encoder_layers=len(net.encoder.layers),
            n_decoder_layers=len(net.decoder.layers),
            vocab_size=net.vocab_size,
            n_genes=net.n_genes,
            count_hidden=net.count_decoder.hidden[0].out_features,
            likelihood=net.count_decoder.likelihood,
            length=length,
            n_times=n_times,
        )


def _linear(n_in: int, n_out: int, rows: float) -> float:
    return 2.0 * n_in * n_out * rows


def _attention(n_query: float, n_key: float, inner: int) -> float:
    """Q K^T and A V over all heads: 2 matmuls of n_query x n_key x inner."""
    return 2 * 2.0 * n_query * n_key * inner


def _self_block(s: Shapes, n: float) -> float:
    """Self-attention (projections + scores) and feed-forward over n tokens: one encoder layer."""
    d, inner = s.d_model, s.inner
    projections = _linear(d, inner, n) + _linear(d, 2 * inner, n) + _linear(inner, d, n)
    feed_forward = _linear(d, 4 * d, n) + _linear(4 * d, d, n)
    return projections + _attention(n, n, inner) + feed_forward


def encoder_flops(s: Shapes) -> float:
    """Forward FLOPs of the encoder over one source sentence."""
    return s.n_encoder_layers * _self_block(s, s.length)


def decoder_flops(s: Shapes, n_memory: float) -> float:
    """Forward FLOPs of one decoder pass over one sentence attending to ``n_memory`` memory tokens."""
    d, inner, n = s.d_model, s.inner, s.length
    cross = _linear(d, inner, n) + _linear(d, 2 * inner, n_memory) + _linear(inner, d, n) + _attention(n, n_memory, inner)
    return s.n_decoder_layers * (_self_block(s, n) + cross)


def count_decoder_flops(s: Shapes) -> float:
    heads = {"zinb": 2, "nb": 1, "gaussian": 1}[s.likelihood]
    h = s.count_hidden
    return _linear(s.d_model, h, 1) + _linear(h, h, 1) + heads * _linear(h, s.n_genes, 1)


def expected_mask_fraction(schedule: str, n_maskable: int, n_grid: int = 100_001) -> float:
    """E[masked / maskable] under ``random_mask``: round(n * gamma(u)) clamped to [1, n], u ~ U(0, 1)."""
    u = torch.linspace(0.0, 1.0, n_grid, dtype=torch.float64)
    n_masked = torch.round(n_maskable * mask_ratio(u, schedule)).clamp(1, n_maskable)
    return float(n_masked.mean()) / n_maskable


def training_flops(s: Shapes, n_masked: float) -> dict[str, float]:
    """FLOPs of one training example (one pair row), by part; ``total`` is their sum.

    The source is encoded once; the ``n_times - 2`` other targets are decoded in time order without gradient
    (forward only) against a memory that grows by one sentence per pass; the masked target is decoded with
    gradient against all ``n_times - 1`` sentences of memory; ``n_masked`` positions go through the token head.
    """
    n = s.length
    context = sum(decoder_flops(s, n * (1 + k)) for k in range(s.n_times - 2))
    target = decoder_flops(s, n * (s.n_times - 1))
    parts = {
        "encoder (fwd+bwd)": 3 * encoder_flops(s),
        "context passes (fwd, no grad)": context,
        "target pass (fwd+bwd)": 3 * target,
        "token head (fwd+bwd)": 3 * _linear(s.d_model, s.vocab_size, n_masked),
        "count decoder (fwd+bwd)": 3 * count_decoder_flops(s),
    }
    parts["complete target pass (fwd+bwd)"] = 3 * target  # the count decoder reads the complete target
    parts["total"] = sum(parts.values())
    return parts


# ---------------------------------------------------------------------------------------------- data and model
def synthetic_batch(batch: int, n_times: int, max_len: int, n_genes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Paired sentences (batch, n_times, max_len + 1) of distinct genes with [CLS] first, and target counts."""
    order = torch.rand(batch * n_times, n_genes, generator=generator).argsort(dim=1)[:, :max_len]
    tokens = (order + N_SPECIAL).view(batch, n_times, max_len)
    cls = torch.full((batch, n_times, 1), CLS_ID, dtype=torch.long)
    rate = torch.exp(1.5 * torch.randn(batch, n_genes, generator=generator) - 1.0)  # log-normal gene means
    counts = torch.poisson(rate, generator=generator)
    return {"sentences": torch.cat([cls, tokens], dim=2), "counts": counts, "library_size": counts.sum(1)}


def build(config: TraceConfig, n_genes: int, n_times: int, device: torch.device) -> TraceNet:
    spec = SimpleNamespace(
        vocab_size=n_genes + N_SPECIAL, n_genes=n_genes, max_len=config.data.max_len, time_values=list(range(n_times))
    )
    return build_net(spec, config).to(device).train()


class Trainer:
    """One optimisation step as the Lightning plan takes it: losses, backward, clipping, AdamW."""

    def __init__(self, net: TraceNet, config: TraceConfig, device: torch.device, autocast: bool):
        self.net, self.config, self.device, self.autocast = net, config, device, autocast
        # The optimiser training builds (its parameter groups and rates), so this benchmark cannot drift from it;
        # without a step budget the plan returns the bare optimiser.
        self.optimizer = TracePlan(net, config).configure_optimizers()
        self.generator = torch.Generator(device=device).manual_seed(0)

    def step(self, batch: dict[str, torch.Tensor], times: torch.Tensor, target_index: int) -> float:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            losses = self.net.training_losses(
                batch["sentences"], times, target_index, batch["counts"], batch["library_size"],
                self.config.training.mask_schedule, self.generator,
            )
            loss = losses["token_loss"] + losses["count_loss"] / self.net.n_genes
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), GRADIENT_CLIP)
        self.optimizer.step()
        return float(loss.detach())


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops_per_s(n: int, device: torch.device, dtype: torch.dtype, min_seconds: float = 2.0) -> tuple[float, float]:
    """Dense n x n @ n x n matmul speed (2 n^3 FLOPs per product): best FLOPs per wall second and per CPU second.

    Best of repeated products, so a moment when another job held the core does not lower the reference.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best_wall = best_cpu = math.inf
    spent = 0.0
    while spent < min_seconds:
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        torch.matmul(a, b)
        _sync(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best_wall, best_cpu, spent = min(best_wall, wall), min(best_cpu, cpu), spent + wall
    return 2.0 * n**3 / best_wall, 2.0 * n**3 / max(best_cpu, 1e-9)


def counted_flops(trainer: Trainer, batch: dict[str, torch.Tensor], times: torch.Tensor, target_index: int) -> tuple[float, int]:
    """(total FLOPs of one step as ``FlopCounterMode`` sees them, rows that went through the token head)."""
    rows = []
    hook = trainer.net.token_head.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    counter = FlopCounterMode(display=False)
    # torch's counter has no formula for the CPU flash-attention kernel; the math kernel is plain bmm it counts.
    try:
        with counter, sdpa_kernel(SDPBackend.MATH):
            trainer.step(batch, times, target_index)
    finally:
        hook.remove()
    return float(counter.get_total_flops()), sum(rows)


CPU_BATCH = 8
"""Batch of the paper-sized presets on CPU: one step of 64 ``eb`` examples is ~7 TFLOP, minutes on two cores."""


def batch_size(preset: str, preset_batch: int, requested: int | None, device: torch.device) -> int:
    if requested:
        return requested
    return preset_batch if device.type != "cpu" or preset == DEFAULT_PRESET else min(preset_batch, CPU_BATCH)


def run_preset(preset: str, threads: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.set_num_threads(threads)
    config = load_config(preset)
    config = config.update({"batch_size": batch_size(preset, config.training.batch_size, args.batch_size, device)})
    if config.counts.likelihood == "auto":  # resolved from the data at fit; the synthetic batch holds counts
        config = config.update({"likelihood": "zinb"})
    torch.manual_seed(0)
    net = build(config, args.n_genes, args.n_times, device)
    trainer = Trainer(net, config, device, autocast=device.type == "cuda")
    generator = torch.Generator().manual_seed(1)
    batch = synthetic_batch(config.training.batch_size, args.n_times, config.data.max_len, args.n_genes, generator)
    batch = {k: v.to(device) for k, v in batch.items()}
    times = torch.arange(args.n_times, dtype=torch.float32, device=device)
    shapes = Shapes.of(net, config.data.max_len + 1, args.n_times)
    n_masked = expected_mask_fraction(config.training.mask_schedule, config.data.max_len) * config.data.max_len
    per_example = training_flops(shapes, n_masked)

    # Warm-up step, counted by torch's FLOP counter to check the analytic formula.
    target_index = 1 + args.n_times // 2
    measured, n_head_rows = counted_flops(trainer, batch, times, target_index)
    check = training_flops(shapes, n_head_rows / config.training.batch_size)["total"] * config.training.batch_size
    for _ in range(args.warmup - 1):
        trainer.step(batch, times, target_index)

    matmul_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    before = matmul_flops_per_s(args.matmul_size, device, matmul_dtype)
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        trainer.step(batch, times, 1 + step % (args.n_times - 1))
    _sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # Timed before and after the steps, the faster kept: the reference is not lowered by a busy moment.
    after = matmul_flops_per_s(args.matmul_size, device, matmul_dtype)
    matmul, matmul_cpu = max(before[0], after[0]), max(before[1], after[1])
    examples = args.steps * config.training.batch_size
    flops = per_example["total"] * examples
    result = {
        "preset": preset, "threads": threads, "batch": config.training.batch_size, "steps": args.steps,
        "s_per_step": wall / args.steps, "cpu_s_per_step": cpu / args.steps,
        "examples_per_s": examples / wall,
        "tokens_per_s": examples * args.n_times * (config.data.max_len + 1) / wall,
        "gflop_per_example": per_example["total"] / 1e9,
        "counted_over_analytic": measured / check,
        "achieved_gflop_s": flops / wall / 1e9, "matmul_gflop_s": matmul / 1e9, "fraction": flops / wall / matmul,
        # Per CPU second on both sides: what the fraction is when other jobs take turns on the same cores.
        "fraction_cpu_time": flops / cpu / matmul_cpu,
    }
    print(
        f"{preset:>10} threads={threads} batch={config.training.batch_size} steps={args.steps}: "
        f"{result['s_per_step']:.2f} s/step ({result['cpu_s_per_step']:.2f} s CPU), "
        f"{result['examples_per_s']:.2f} examples/s, {result['tokens_per_s']:.0f} tokens/s | "
        f"{result['gflop_per_example']:.3f} GFLOP/example (FlopCounterMode/analytic {result['counted_over_analytic']:.4f}) | "
        f"achieved {result['achieved_gflop_s']:.1f} GFLOP/s of matmul {result['matmul_gflop_s']:.1f} GFLOP/s = "
        f"{100 * result['fraction']:.1f}% (per CPU second: {100 * result['fraction_cpu_time']:.1f}%)",
        flush=True,
    )
    if args.verbose:
        for part, flops in per_example.items():
            print(f"    {part:<34} {flops / 1e9:9.3f} GFLOP  {100 * flops / per_example['total']:5.1f}%")
    if args.profile:
        profile_step(trainer, batch, times, target_index, args.profile_rows)
    return result


def profile_step(trainer: Trainer, batch: dict[str, torch.Tensor], times: torch.Tensor, target_index: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        trainer.step(batch, times, target_index)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["cpu-small", "eb"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads; each value is a run")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default: the preset's, at most {CPU_BATCH} on CPU for presets other than {DEFAULT_PRESET}")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (the first is FLOP-counted)")
    parser.add_argument("--n-times", type=int, default=5, help="time points per pair row (source + targets)")
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of one step")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--verbose", action="store_true", help="print the FLOPs per part")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    for preset in args.preset:
        for threads in args.threads:
            run_preset(preset, threads, args, device)


if __name__ == "__main__":
    main()
