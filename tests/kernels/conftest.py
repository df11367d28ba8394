"""Collects the errors the parity tests measure and prints them as a table at the end of the run."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.reference import Error, error

# (op, quantity, backend, dtype) -> the worst error seen over the shape grid.
_WORST: dict[tuple[str, str, str, str], Error] = {}


@pytest.fixture
def record_error():
    """record_error(op, quantity, backend, dtype, actual, reference): keep the worst error."""

    def record(
        op: str,
        quantity: str,
        backend: str,
        dtype: torch.dtype,
        actual: torch.Tensor,
        reference: torch.Tensor,
    ) -> None:
        key = (op, quantity, backend, str(dtype).removeprefix("torch."))
        measured = error(actual, reference)
        worst = _WORST.get(key)
        _WORST[key] = Error(
            max(measured.abs, worst.abs if worst else 0.0),
            max(measured.rel, worst.rel if worst else 0.0),
        )

    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if not _WORST:
        return
    terminalreporter.section("kernel errors vs float64 reference (worst over the shape grid)")
    terminalreporter.write_line(
        f"{'op':<12} {'quantity':<9} {'backend':<7} {'dtype':<9} {'max abs':>10} {'max rel':>10}"
    )
    for (op, quantity, backend, dtype), e in sorted(_WORST.items()):
        terminalreporter.write_line(
            f"{op:<12} {quantity:<9} {backend:<7} {dtype:<9} {e.abs:>10.2e} {e.rel:>10.2e}"
        )
    terminalreporter.write_line("max rel = max |actual - reference| / max |reference|")
