"""What the frozen reference model of a preference run (train=dpo) costs a rank.

The trainer computes the reference log-probs in a forward-only pre-pass of
the starting weights (training/preference.py), so the reference holds no
memory while training; its cost is one forward per pair, once. The line
here sets that against the alternative, a frozen copy sharded like the
policy: the shard's weights again on every rank, and one more forward of
every pair in every step (a forward is about a third of a training step's
forward + backward FLOPs).
"""

from __future__ import annotations

from chatbaker_megatron.plan.memory import GIB


def reference_model_line(weights_bytes: int, days: float | None = None, epochs: int = 1) -> str:
    """One report line: the pre-pass (chosen) against a frozen copy, for a rank holding
    `weights_bytes` of weights; `days` to train the run's token budget, when known."""
    copy = f"a frozen copy sharded like the policy would add {weights_bytes / GIB:.2f} GiB per rank"
    if days is None:
        return f"reference model: forward-only pre-pass, no copy in memory; {copy}"
    return (
        f"reference model: forward-only pre-pass, no copy in memory, about "
        f"{24 * days / (3 * epochs):.2f} h once (a forward of every pair); {copy} "
        f"and about {24 * days / 3:.2f} h (a forward of every pair in every step, {epochs} epoch(s))"
    )
