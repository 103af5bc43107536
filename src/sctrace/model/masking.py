"""MaskGIT masking schedules and the paper's masking of target sequences (Algorithm 1, Appendix A.2).

A schedule ``gamma(u)`` maps the fraction ``u`` of "time" in ``[0, 1]`` to the fraction of tokens that are
masked: ``gamma(0) = 1`` (all masked) and ``gamma(1) = 0`` (none masked). Training draws ``u`` at random per
sequence; MaskGIT generation walks ``u`` from ``1/R`` to ``1`` over ``R`` iterations.
"""

import math

import torch

from sctrace._errors import SctraceInputError

SCHEDULES = ("cosine", "exponential", "cubic", "linear")

EXPONENTIAL_RATE = 5.0
"""Rate ``k`` of the exponential schedule ``(exp(-k u) - exp(-k)) / (1 - exp(-k))``; k = 5 masks few tokens
for most ``u`` (gamma(0.5) ~ 0.076), the sharpest of the four schedules."""


def _check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise SctraceInputError(f"Unknown mask schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")


def mask_ratio(u: torch.Tensor, schedule: str) -> torch.Tensor:
    """Fraction of tokens masked at schedule time ``u`` (MaskGIT's ``gamma``).

    Parameters
    ----------
    u
        (...) float tensor of times in ``[0, 1]``.
    schedule
        One of :data:`SCHEDULES`:

        - ``cosine``: ``cos(pi/2 u)``
        - ``exponential``: ``(exp(-k u) - exp(-k)) / (1 - exp(-k))`` with ``k =`` :data:`EXPONENTIAL_RATE`
        - ``cubic``: ``1 - u^3``
        - ``linear``: ``1 - u``

    Returns
    -------
    (...) tensor of the same dtype as ``u``, decreasing in ``u``, equal to 1 at ``u = 0`` and 0 at ``u = 1``,
    within ``[0, 1]``.
    """
    _check_schedule(schedule)
    if schedule == "cosine":
        # sin(pi/2 (1 - u)) == cos(pi/2 u), but is exactly 0 at u = 1 (cos(pi/2) is 6e-17 in float64).
        ratio = torch.sin(0.5 * math.pi * (1.0 - u))
    elif schedule == "exponential":
        floor = math.exp(-EXPONENTIAL_RATE)
        ratio = (torch.exp(-EXPONENTIAL_RATE * u) - floor) / (1.0 - floor)
    elif schedule == "cubic":
        ratio = 1.0 - u**3
    else:
        ratio = 1.0 - u
    return ratio


def n_tokens_to_mask(n_maskable: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """How many tokens of each sequence Algorithm 1 masks.

    Parameters
    ----------
    n_maskable
        (batch,) int64 number of maskable (neither pad nor CLS) tokens per sequence.
    ratio
        (batch,) float mask ratio per sequence, from :func:`mask_ratio`.

    Returns
    -------
    (batch,) int64 ``round(n_maskable * ratio)`` (``torch.round``, half to even) clamped to
    ``[1, n_maskable]``, so every non-empty sequence contributes at least one label; 0 where ``n_maskable`` is 0.
    """
    n_masked = torch.round(n_maskable.to(ratio.dtype) * ratio).long()
    return torch.minimum(n_masked.clamp(min=1), n_maskable)


def random_mask(
    tokens: torch.Tensor,
    schedule: str,
    generator: torch.Generator | None = None,
    *,
    pad_id: int = 0,
    cls_id: int = 2,
    mask_id: int = 1,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a random, schedule-sized subset of each sequence's gene tokens (Algorithm 1 of the paper).

    Per sequence: draw ``u ~ U(0, 1)``, ratio ``= mask_ratio(u)``, mask :func:`n_tokens_to_mask` tokens chosen
    uniformly among the maskable positions (not pad, not CLS). The random draws are, in this order,
    ``torch.rand(batch)`` for ``u`` and ``torch.rand(batch, length)`` for the position scores, both from
    ``generator``, so a test or caller can replay them.

    Unlike the paper's single argsort (which only excludes padding when it is trailing), positions are ranked
    by argsort of argsort, so pad and CLS anywhere in the sequence are never chosen.

    Parameters
    ----------
    tokens
        (batch, length) int64 token ids, possibly with CLS and PAD tokens.
    schedule
        One of :data:`SCHEDULES`.
    generator
        Random generator on ``tokens.device``; the global one when None.
    pad_id, cls_id, mask_id
        Ids of the special tokens.
    ignore_index
        Label of positions that are not masked (cross-entropy's ``ignore_index``).

    Returns
    -------
    masked_tokens
        (batch, length) int64, ``tokens`` with the chosen positions set to ``mask_id``.
    labels
        (batch, length) int64, the original token at masked positions and ``ignore_index`` elsewhere.
    """
    if tokens.ndim != 2:
        raise SctraceInputError(f"Tokens must be a (batch, length) tensor, got shape {tuple(tokens.shape)}.")
    batch, length = tokens.shape
    maskable = (tokens != pad_id) & (tokens != cls_id)
    n_maskable = maskable.sum(dim=1)

    u = torch.rand(batch, generator=generator, device=tokens.device)
    n_masked = n_tokens_to_mask(n_maskable, mask_ratio(u, schedule))

    scores = torch.rand(batch, length, generator=generator, device=tokens.device)
    scores = scores.masked_fill(~maskable, math.inf)
    # rank[i, j] = position of token j in a random ordering of row i with non-maskable tokens last.
    rank = scores.argsort(dim=1).argsort(dim=1)
    mask = rank < n_masked[:, None]

    masked_tokens = tokens.masked_fill(mask, mask_id)
    labels = tokens.masked_fill(~mask, ignore_index)
    return masked_tokens, labels


def unmask_count_schedule(step: int, total_steps: int, length: torch.Tensor, schedule: str) -> torch.Tensor:
    """Number of positions that stay masked after MaskGIT iteration ``step`` of ``total_steps``.

    This is the raw schedule value ``floor(length * gamma((step + 1) / total_steps))``; it is 0 after the last
    step. The caller clamps it below the number masked before the step, so every iteration unmasks at least
    one position.

    Parameters
    ----------
    step
        0-based iteration index, ``0 <= step < total_steps``.
    total_steps
        Number of generation iterations ``R >= 1``.
    length
        (batch,) int64 length of each generated sequence (gene positions, CLS excluded).
    schedule
        One of :data:`SCHEDULES`.

    Returns
    -------
    (batch,) int64 number of positions still masked after this iteration.
    """
    if total_steps < 1 or not 0 <= step < total_steps:
        raise SctraceInputError(
            f"Generation step {step} is outside 0..{total_steps - 1}; "
            "use 0 <= step < total_steps with total_steps >= 1."
        )
    # float64 so floor(length * gamma) is not pushed down by float32 rounding for long sequences.
    u = torch.tensor((step + 1) / total_steps, dtype=torch.float64, device=length.device)
    ratio = mask_ratio(u, schedule)
    return torch.floor(length.to(torch.float64) * ratio).long()
