"""Known, harmless notices of third-party packages, hidden in one place.

megatron-core, torch, transformers and lm-eval announce, on import or on every
step, optional GPU packages this machine lacks, their own deprecations and
fallbacks they take on purpose. None of it is about the user's run, so the
`chatbaker` command hides exactly the notices listed here (`warnings` by
message and category, log records by logger and message) before a verb imports
its heavy modules, and the training ranks do the same (train.py). It also turns
off transformers' progress bars ("Loading weights" on every model load).
`chatbaker --verbose VERB` shows them: it sets CHATBAKER_VERBOSE=1, which the
verb's child processes (torchrun ranks) inherit. Any notice not listed still
shows.

Imports nothing of the project nor torch, so that it can run first.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass

VERBOSE_ENV = "CHATBAKER_VERBOSE"
HF_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


@dataclass(frozen=True)
class WarnedNotice:
    """A `warnings.warn` notice: `message` is a regex matched at the start of its text.

    `module` (a regex, as in `warnings.filterwarnings`) narrows it to warnings
    attributed to that module, for generic messages. No `:` in either:
    pytest reads the same entries as `filterwarnings` lines (tests/conftest.py).
    """

    source: str
    message: str
    category: type[Warning]
    why: str
    module: str = ""


@dataclass(frozen=True)
class LoggedNotice:
    """A log record of `logger` (exactly that logger) whose text starts with regex `message`."""

    source: str
    logger: str
    message: str
    why: str


WARNED: tuple[WarnedNotice, ...] = (
    WarnedNotice(
        source="megatron-core (optimizer, clip_grads, megatron_fsdp, on import)",
        message="Transformer Engine and Apex are not installed",
        category=UserWarning,
        why="megatron then uses its torch implementations of the fused optimizer ops, "
        "the path this project runs on CPU and on plain PyTorch GPU images",
    ),
    WarnedNotice(
        source="megatron-core (models/backends, on import)",
        message="Apex is not installed. Falling back to Torch Norm",
        category=UserWarning,
        why="about megatron's own layer specs; the model's norm comes from model/spec.py",
    ),
    WarnedNotice(
        source="megatron-core (TransformerConfig.__post_init__)",
        message="full scope is deprecated",
        category=UserWarning,
        why="megatron's own default cuda_graph_modules='full' triggers it; this project "
        "does not capture CUDA graphs (megatron's default cuda_graph_impl='none')",
    ),
    WarnedNotice(
        source="megatron-core (mimo configs, on import of megatron.core.optimizer)",
        message=r"(MimoModelConfig|MimoModel|ModalitySubmodules) is experimental",
        category=UserWarning,
        why="an experimental multimodal model class this project never uses",
    ),
    WarnedNotice(
        source="torch (C++), from megatron-core's optimizer zero_grad",
        message=r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
        category=UserWarning,
        why="megatron probes `.grad` on every parameter it holds, views included, "
        "only to clear it; gradients are kept in megatron's main_grad buffers",
        module=r"megatron\.core\.optimizer",
    ),
    WarnedNotice(
        source="torch.distributed (called by megatron-core's DDP and distributed optimizer)",
        message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
        category=FutureWarning,
        why="megatron-core 0.19 calls these collectives; they work as before",
    ),
    WarnedNotice(
        source="torch.distributed.checkpoint (called by megatron's dist_checkpointing)",
        message="torch.distributed is disabled, unavailable or uninitialized",
        category=UserWarning,
        why="export-hf, generate and chat read a checkpoint in one process "
        "without a process group on purpose",
    ),
    WarnedNotice(
        source="torch.distributed.checkpoint (called by megatron's dist_checkpointing)",
        message="The argument order of (load|save) has been changed",
        category=UserWarning,
        why="megatron-core passes its arguments positionally; they are correct",
    ),
    WarnedNotice(
        source="torch.distributed.checkpoint (loading megatron-core's checkpoints)",
        message="Please use DTensor instead and we are deprecating ShardedTensor",
        category=FutureWarning,
        why="megatron-core 0.19's checkpoint strategy hands torch ShardedTensors; "
        "they load as before",
    ),
    WarnedNotice(
        source="transformers (LlamaForCausalLM.forward, 5.x)",
        message="`past_key_values` is deprecated",
        category=FutureWarning,
        why="inference/backends.py passes the KV cache as `past_key_values`, the name every "
        "supported transformers accepts (>= 4.45; `cache` exists only in 5.x)",
    ),
    WarnedNotice(
        source="megatron-core (inference/contexts/__init__, on import by its GPT model code)",
        message="The following imports from `dynamic_context.py` will be removed",
        category=DeprecationWarning,
        why="about megatron's own internal imports; this project uses no inference context",
    ),
)

LOGGED: tuple[LoggedNotice, ...] = (
    LoggedNotice(
        source="torch (cpp_extension, imported by megatron-core)",
        logger="torch.utils.cpp_extension",
        message="No CUDA runtime is found",
        why="a CUDA toolkit without a GPU; nothing is compiled at run time "
        "(the CUDA kernels are built at install, see setup.py)",
    ),
    LoggedNotice(
        source="megatron-core (GPTModel.__init__)",
        logger="megatron.core.models.gpt.gpt_model",
        message="GPTModel IS DEPRECATED",
        why="GPTModel is the model of the pinned megatron-core 0.19 and this project's model",
    ),
    LoggedNotice(
        source="megatron-core (DistributedDataParallel.__init__)",
        logger="megatron.core.distributed.distributed_data_parallel",
        message="DistributedDataParallel: full_param_layout not provided",
        why="DDP then computes the distributed optimizer's layout itself, as it always did",
    ),
    LoggedNotice(
        source="megatron-core (dist_checkpointing torch strategy, on save)",
        logger="megatron.core.dist_checkpointing.strategies.torch",
        message="MCore's async save is deprecated",
        why="logged on every save, synchronous ones included (megatron runs those through the "
        "same writer); checkpoint.async_save uses megatron's own writer on purpose "
        "(docs/training.md, Checkpoints)",
    ),
    LoggedNotice(
        source="megatron-core (dist_checkpointing validation, on save)",
        logger="megatron.core.dist_checkpointing.validation",
        message=r"Rank \d+ common state dict differs from rank 0 common state dict\. "
        r"Keys only on rank 0: \[\], Keys only on \d+: \[\('optimizer', 'param_state'\)\], "
        r"Mismatched keys: \[\]$",
        why="the distributed optimizer's param_state is sharded state, present in the "
        "common dict of some ranks only; its shards are saved and resume bit-exactly",
    ),
    LoggedNotice(
        source="lm-eval (evaluator.simple_evaluate)",
        logger="lm_eval.evaluator",
        message="Overwriting default num_fewshot of",
        why="eval is zero-shot by design: it passes num_fewshot=0 for every task",
    ),
)


class _DropKnown(logging.Filter):
    """Drops a logger's records whose message matches one of its known notices."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{m})" for m in messages))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def verbose() -> bool:
    """Whether this process shows the known notices (`chatbaker --verbose`)."""
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0")


def hide_known_notices() -> None:
    """Hide WARNED, LOGGED and transformers' bars in this process, unless verbose().

    Call it before importing the packages that emit them; calling it again
    changes nothing.
    """
    if verbose():
        return
    # transformers reads huggingface_hub's switch for its own bars when it is imported
    # (`transformers.utils.logging.disable_progress_bar()` sets both). Set through the
    # environment, it costs no import here (transformers: ~2 s) and the verb's child
    # processes inherit it. huggingface_hub's download bars go with it: the verbs load
    # models from local folders; lm-eval's first download of a hub task's data shows none.
    os.environ.setdefault(HF_BARS_ENV, "1")
    for warned in WARNED:
        warnings.filterwarnings(
            "ignore", message=warned.message, category=warned.category, module=warned.module
        )
    by_logger: dict[str, list[str]] = {}
    for logged in LOGGED:
        by_logger.setdefault(logged.logger, []).append(logged.message)
    for name, messages in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(messages))
