"""Published figures the evaluation report sets our results next to.

Source: the ChatBaker description (shared context, "Evaluation"): KoBEST
zero-shot macro F1, averaged over BoolQ, COPA, HellaSwag, SentiNeg and WiC.
Only the averages are published; the English comparison (OPT, MPT, LLaMA)
gives no figures, so none are stored for it.
"""

from __future__ import annotations

KOBEST_SOURCE = "ChatBaker description: KoBEST zero-shot macro F1, average of 5 tasks"
KOBEST_MACRO_F1_AVERAGE: dict[str, float] = {
    "42dot-PLM-1.3B": 0.549,
    "Polyglot-Ko-1.3B": 0.539,
    "KoGPT2": 0.504,
}
