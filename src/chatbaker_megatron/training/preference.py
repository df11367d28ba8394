"""Preference tuning (DPO / IPO / RPO) on the training engine: reference log-probs and the objective.

The reference model is the policy's starting point (train.init_from, the SFT
checkpoint). Its log-probs are computed once, in a forward-only pre-pass of
the freshly loaded policy over every pair of the set (train and held-out),
before the first update; they are kept on the device (two float64 numbers a
pair) and saved as `<run_dir>/reference_logps.npy` (+ .json) so that a
resumed run reads them instead of recomputing them from weights that moved
on. A pre-pass instead of a frozen copy sharded like the policy: no second
set of weights in memory (2 bytes a parameter over TP x PP) and one forward
per pair instead of one per pair and epoch; docs/training.md has the figures.

Each micro-batch gets its pairs' reference log-probs (`attach`), and for RPO
the scale that turns the chosen replies' NLL sum into a per-token mean over
the whole global batch (one all-reduce over data-parallel ranks, on device).
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from chatbaker_megatron.atomic_files import publish
from chatbaker_megatron.data.datasets.preference import PreferenceDataset
from chatbaker_megatron.platform import Platform
from chatbaker_megatron.training.batches import global_batch
from chatbaker_megatron.training.engine import Engine
from chatbaker_megatron.training.preference_loss import (
    REPORT_SIZE,
    PairLogps,
    figures,
    pair_losses,
    report_sums,
)
from chatbaker_megatron.training.preference_report import reference_paths
from chatbaker_megatron.training.step import Objective, eval_step

log = logging.getLogger(__name__)


def _sequence_logps(
    batch: dict[str, torch.Tensor], output_tensor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen, rejected log-probs, chosen, rejected reply tokens) per pair from per-token losses."""
    b, s = batch["tokens"].shape
    token_logps = -output_tensor.float().reshape(b, s)
    chosen_mask = batch["chosen_mask"].float()
    rejected_mask = batch["loss_mask"].float() - chosen_mask
    return (
        (token_logps * chosen_mask).sum(-1),
        (token_logps * rejected_mask).sum(-1),
        chosen_mask.sum(-1),
        rejected_mask.sum(-1),
    )


def preference_loss_func(
    settings: Any,
    batch: dict[str, torch.Tensor],
    output_tensor: torch.Tensor,
):
    """megatron's loss function for one micro-batch: (sum of pair losses, pairs, report)."""
    chosen, rejected, chosen_tokens, rejected_tokens = _sequence_logps(batch, output_tensor)
    reference = batch["reference_logps"].to(chosen.dtype)
    logps = PairLogps(
        chosen, rejected, reference[:, 0], reference[:, 1], chosen_tokens, rejected_tokens
    )
    losses, chosen_rewards, rejected_rewards = pair_losses(
        logps,
        loss=settings.loss,
        beta=settings.beta,
        label_smoothing=settings.label_smoothing,
    )
    loss_sum = losses.sum()
    nll_chosen = -chosen.sum()
    if settings.loss == "rpo":
        # nll_scale = pairs / chosen tokens of the global batch: after megatron divides the
        # summed loss by the pairs, this term is alpha x the per-token NLL of the batch.
        loss_sum = loss_sum + settings.rpo_alpha * nll_chosen * batch["nll_scale"].reshape(())
    pairs = torch.tensor(len(chosen), dtype=torch.int, device=chosen.device)
    report = torch.cat(
        [
            torch.stack([loss_sum.detach(), pairs.float()]),
            report_sums(logps, chosen_rewards, rejected_rewards, nll_chosen),
        ]
    )
    return loss_sum, pairs, {"lm loss": report}


def _record_logps(table: torch.Tensor, batch: dict[str, torch.Tensor], output_tensor):
    """Pre-pass loss function: writes each real pair's log-probs into `table`, reports nothing."""
    chosen, rejected, _, _ = _sequence_logps(batch, output_tensor)
    index = batch["pair_index"].reshape(-1)
    real = index >= 0
    table[index[real]] = torch.stack([chosen, rejected], dim=-1)[real].to(table.dtype)
    zero = output_tensor.float().sum() * 0.0
    count = torch.tensor(len(chosen), dtype=torch.int, device=chosen.device)
    return zero, count, {"lm loss": torch.stack([zero.detach(), count.float()])}


class _InOrder:
    """Pairs in store order, padded to whole global batches by repeats flagged pair_index -1."""

    def __init__(self, dataset: PreferenceDataset, pairs: np.ndarray, padded: int) -> None:
        self.dataset, self.pairs, self.padded = dataset, pairs, padded

    def __len__(self) -> int:
        return self.padded

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset.sample(int(self.pairs[index % len(self.pairs)]))
        if index >= len(self.pairs):
            sample["pair_index"] = torch.tensor(-1, dtype=torch.int64)
        return sample


def reference_prepass(
    engine: Engine,
    datasets: list[PreferenceDataset],
    *,
    global_batch_size: int,
    micro_batch_size: int,
    dp: int,
    dp_rank: int,
    plat: Platform,
) -> torch.Tensor:
    """[pairs in the store, 2] float64 on the device: the current weights' log-probs of every
    pair of `datasets` (chosen, rejected); rows of pairs not in them stay 0. Collective."""
    store_pairs = len(datasets[0].store) // 4
    pairs = np.unique(np.concatenate([d.pairs for d in datasets]))
    padded = -(-len(pairs) // global_batch_size) * global_batch_size
    ordered = _InOrder(datasets[0], pairs, padded)
    table = torch.zeros(store_pairs, 2, dtype=torch.float64, device=plat.device)
    objective = Objective(partial(_record_logps, table), 2)
    steps, started = padded // global_batch_size, time.perf_counter()
    for step, start in enumerate(range(0, padded, global_batch_size), 1):
        micro_batches = global_batch(
            ordered,
            start=start,
            global_batch_size=global_batch_size,
            micro_batch_size=micro_batch_size,
            dp=dp,
            dp_rank=dp_rank,
            plat=plat,
        )
        eval_step(engine, micro_batches, objective)
        if dist.get_rank() == 0 and (step % max(1, steps // 10) == 0 or step == steps):
            log.info(
                "reference pre-pass: %d/%d global batches, %.0fs",
                step,
                steps,
                time.perf_counter() - started,
            )
    # Each pair was written once, on one data-parallel rank's last pipeline stage.
    dist.all_reduce(table, group=parallel_state.get_data_parallel_group())
    dist.all_reduce(table, group=parallel_state.get_pipeline_model_parallel_group())
    return table


class PreferenceTraining:
    """The preference objective of a run, its reference log-probs and its metrics."""

    def __init__(self, settings: Any, reference: torch.Tensor, global_batch_size: int) -> None:
        self.settings = settings
        self.reference = reference
        self.global_batch_size = global_batch_size
        self.objective = Objective(partial(preference_loss_func, settings), REPORT_SIZE)

    def attach(self, micro_batches: list[dict[str, torch.Tensor]]) -> None:
        """Add each micro-batch's reference log-probs (and RPO's NLL scale), in place."""
        for batch in micro_batches:
            batch["reference_logps"] = self.reference[batch["pair_index"]]
        if self.settings.loss != "rpo":
            return
        tokens = torch.stack([b["chosen_mask"].sum() for b in micro_batches]).sum()
        dist.all_reduce(tokens, group=parallel_state.get_data_parallel_group())
        scale = self.global_batch_size / tokens.clamp(min=1)
        for batch in micro_batches:
            batch["nll_scale"] = scale

    def figures(self, sums: tuple[float, ...], pairs: int, prefix: str = "") -> dict[str, float]:
        """Reward accuracy, margin, rewards and log-probs of a step's (or a validation's)
        sums over `pairs` pairs."""
        return figures(sums, pairs, prefix) if pairs else {}


def _identity(cfg: Any, datasets: list[PreferenceDataset]) -> dict[str, Any]:
    """What the saved reference log-probs were computed for; a resume must match it."""
    return {
        "init_from": cfg.train.init_from,
        "data_path": cfg.data.preference.path,
        "template": cfg.data.preference.template,
        "seq_length": cfg.train.seq_length,
        "store_pairs": len(datasets[0].store) // 4,
        "pairs": int(sum(len(d.pairs) for d in datasets)),
        # The held-out pairs (the split follows the seed): the demo's before/after report.
        "valid_pairs": datasets[1].pairs.tolist() if len(datasets) > 1 else [],
    }


def load_reference(run_dir: str, identity: dict[str, Any], plat: Platform) -> torch.Tensor | None:
    """The saved reference log-probs of this run, or None when it has none yet."""
    values, meta = reference_paths(run_dir)
    if not os.path.exists(values):
        return None
    with open(meta, encoding="utf-8") as f:
        saved = json.load(f)
    if saved != identity:
        changed = sorted(k for k in identity if saved.get(k) != identity[k])
        raise ValueError(
            f"{values}: the reference log-probs were computed for another setup "
            f"({', '.join(f'{k}: {saved.get(k)!r} -> {identity[k]!r}' for k in changed)}); "
            "resume with the settings of the run, or start a new run_dir"
        )
    return plat.from_host(torch.from_numpy(np.load(values)))


def save_reference(run_dir: str, identity: dict[str, Any], table: torch.Tensor) -> None:
    """Rank 0: write the reference log-probs atomically beside the run's checkpoints."""
    values, meta = reference_paths(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with open(f"{values}.partial", "wb") as f:
        np.save(f, table.cpu().numpy())
    with open(f"{meta}.partial", "w", encoding="utf-8") as f:
        json.dump(identity, f, indent=2)
    publish((f"{meta}.partial", meta), (f"{values}.partial", values))


def build_preference_training(
    cfg: Any, datasets: list[PreferenceDataset], engine: Engine, ctx: Any, iteration: int
) -> PreferenceTraining:
    """The run's PreferenceTraining: reference log-probs read back, or computed by the pre-pass.

    Collective. `iteration` > 0 (a resumed run) needs the saved log-probs: its
    weights are no longer the reference.
    """
    identity = _identity(cfg, datasets)
    reference = load_reference(cfg.run_dir, identity, ctx.platform)
    if reference is None:
        if iteration > 0:
            raise FileNotFoundError(
                f"{reference_paths(cfg.run_dir)[0]} is missing: a preference run resumed at "
                f"iteration {iteration} needs the reference log-probs its first attempt saved"
            )
        started = time.perf_counter()
        reference = reference_prepass(
            engine,
            datasets,
            global_batch_size=cfg.train.global_batch_size,
            micro_batch_size=cfg.parallel.micro_batch_size,
            dp=ctx.dp,
            dp_rank=ctx.dp_rank,
            plat=ctx.platform,
        )
        if ctx.rank == 0:
            save_reference(cfg.run_dir, identity, reference)
            log.info(
                "reference log-probs of %d pairs in %.1fs (forward-only pre-pass) -> %s",
                identity["pairs"],
                time.perf_counter() - started,
                reference_paths(cfg.run_dir)[0],
            )
        dist.barrier()
    return PreferenceTraining(cfg.train.preference, reference, cfg.train.global_batch_size)
