"""Resume with other optimizer settings: the learning rate, its schedule, weight decay, Adam's betas.

Changing them on resume is routine (a lower peak LR after a loss spike, a
longer decay for an extended run). megatron-core's distributed optimizer
pairs each saved parameter group with the current one by its schedule values
(`max_lr`, `min_lr`, `start_wd`, ...), so a changed `optim.lr` found no pair
(a raw KeyError), and its scheduler takes the checkpoint's values unless told
to override them. Here the groups are paired by what they hold (their
wd_mult, lr_mult, ...: the same model builds the same groups), and
`optim.resume_schedule` says which values win, as Megatron-LM's two flags do:

- `config` (`--override-opt_param-scheduler`): the run's optim.* settings
  (LR, min LR, warmup, decay, weight decay, betas, eps) from this step on,
  at the saved step count; the Adam moments are the checkpoint's.
- `checkpoint` (`--use-checkpoint-opt_param-scheduler`): the values saved in
  the checkpoint, whatever the config says now.

Either way, one line names every optim.* setting that differs from the
checkpoint's run config, and which values are used.
"""

from __future__ import annotations

import logging
from typing import Any

from megatron.core.optimizer.optimizer import param_group_identifier_keys

from chatbaker_megatron.checkpoint.state import ModelAndOptimizer

log = logging.getLogger(__name__)

# The identifiers megatron pairs groups by that come from the schedule (optim.lr, ...);
# the others (wd_mult, lr_mult, ...) say which parameters a group holds.
SCHEDULE_IDS = ("max_lr", "min_lr", "start_wd", "end_wd")
# The parameter-group values that come from optim.*: with `config` they are this run's.
# (The rest, e.g. the step count megatron keeps in each group, stays the checkpoint's.)
CONFIGURED_KEYS = ("max_lr", "min_lr", "lr", "weight_decay", "betas", "eps")


def _saved_param_groups(state: Any) -> list[dict[str, Any]]:
    """Every `param_groups` list in a loaded optimizer state, in order (chained optimizers nest)."""
    if isinstance(state, dict):
        if isinstance(state.get("param_groups"), list):
            return list(state["param_groups"])
        return [g for value in state.values() for g in _saved_param_groups(value)]
    if isinstance(state, list | tuple):
        return [g for value in state for g in _saved_param_groups(value)]
    return []


def _pair_groups(current: list[dict[str, Any]], saved: list[dict[str, Any]]) -> None:
    """Give each current group the schedule identifiers of the saved group that holds the same
    parameters (the same wd_mult, lr_mult, ...), so that megatron pairs them whatever the LR."""
    structural = [k for k in param_group_identifier_keys if k not in SCHEDULE_IDS]
    by_structure = {tuple(g.get(k) for k in structural): g for g in saved}
    for group in current:
        match = by_structure.get(tuple(group.get(k) for k in structural))
        if match is None:
            continue
        for key in SCHEDULE_IDS:
            if key in match or key in group:
                group[key] = match.get(key)


def load_optimizer_and_schedule(
    parts: ModelAndOptimizer, optimizer_state: Any, scheduler_state: dict, schedule_from: str
) -> None:
    """Load the optimizer and the LR/WD scheduler; `schedule_from`: `config` or `checkpoint`."""
    current = parts.optimizer.param_groups
    configured = [{k: group[k] for k in CONFIGURED_KEYS if k in group} for group in current]
    _pair_groups(current, _saved_param_groups(optimizer_state))
    parts.optimizer.load_state_dict(optimizer_state)
    from_config = schedule_from == "config"
    if from_config:
        for group, values in zip(parts.optimizer.param_groups, configured, strict=True):
            group.update(values)
    parts.scheduler.override_opt_param_scheduler = from_config
    parts.scheduler.use_checkpoint_opt_param_scheduler = not from_config
    parts.scheduler.load_state_dict(scheduler_state)


def _flatten(section: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in section.items()}


def changed_settings(saved_config: Any, current_optim: dict[str, Any] | None) -> list[str]:
    """`optim.KEY saved -> now` for every optim setting the run changed since the checkpoint."""
    if current_optim is None or not isinstance(saved_config, dict):
        return []
    saved = _flatten(saved_config.get("optim") or {}, "optim.")
    now = _flatten(current_optim, "optim.")
    return [
        f"{key} {saved.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(saved) | set(now))
        if key != "optim.resume_schedule" and saved.get(key) != now.get(key)
    ]


def log_changes(
    saved_config: Any, current_optim: dict[str, Any] | None, schedule_from: str
) -> None:
    """One line naming the optim settings that changed since the checkpoint, and what is used."""
    changes = changed_settings(saved_config, current_optim)
    if not changes:
        return
    used = (
        "the config's values are used from here on (optim.resume_schedule=config)"
        if schedule_from == "config"
        else "the checkpoint's values are kept (optim.resume_schedule=checkpoint)"
    )
    log.warning("resuming with changed optimizer settings: %s; %s", ", ".join(changes), used)
