"""What the command modules share: option help texts and small parsers."""

from __future__ import annotations

from sctrace._errors import SctraceInputError

TASK_HELP = ("auto (from --holdout: none without one, extrapolate for the last observed time, else "
             "interpolate) | interpolate | extrapolate | none")
COUNT_KIND_HELP = ("auto (read from the values: integers are raw counts, small non-integers log-normalised) | counts | "
                   "lognorm. The likelihood follows: zinb for counts, hurdle for log-normalised values.")
PAIRING_HELP = ("random | stratified | ot (default: the preset's; stratified with --stratify). ot chains each source "
                "cell's partners by optimal transport between consecutive times, so a training row follows one lineage.")


def simulated():
    """The built-in data: the package's simulator (a command's DATA argument left out)."""
    from sctrace.data.simulate import simulate_timecourse

    return simulate_timecourse(seed=0)


def parse_list(text: str, what: str) -> list[str]:
    """Items of a comma-separated option (``--what``), refused when empty."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise SctraceInputError(f"--{what} is empty; give a comma-separated list.")
    return items


def parse_seeds(text: str) -> list[int]:
    """``--seeds`` as integers, refused in one sentence when an item is not one."""
    try:
        return [int(item) for item in parse_list(text, "seeds")]
    except ValueError as err:
        raise SctraceInputError(f"--seeds must be comma-separated integers (e.g. 0,1,2), got '{text}'.") from err
