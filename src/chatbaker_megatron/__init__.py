"""chatbaker_megatron: 3D-parallel training of the ChatBaker LLaMA models on megatron-core.

Its layers, top to bottom, are in docs/architecture.md.

cli.py           the `chatbaker` command: verb -> module, the global --verbose
train.py         `chatbaker train`: Hydra entry, data preparation, torchrun
launch.py        torchrun command lines and the ranks' environment, multi-node launch
training/        the loop, engine, step, checkpointing, metrics, dry run
serve/           `chatbaker serve`: the OpenAI-compatible chat server and web page
convert/         Hugging Face interop: export-hf, import-hf
eval/            `chatbaker eval`: lm-eval on an exported folder
eval_chat/       `chatbaker eval-chat`: chat models judged by an LLM
plan/            `chatbaker plan`: which parallel layouts fit, and how fast they train
inference/       generation and chat backends
checkpoint/      the checkpoint format on megatron-core dist_checkpointing
model/           the LLaMA model as megatron-core ModuleSpecs
data/            tokenizer, curation, preprocessing, what training reads
parallel.py      torch.distributed + megatron-core parallel_state
config/          one dataclass per Hydra group, and their validation
run_lock.py      one job per run directory and per checkpoint directory
stop_signals.py  what a chatbaker process makes of stop signals
atomic_files.py  files replaced whole or not at all
disk_errors.py   a full, over-quota or read-only filesystem, told from the error
platform/        the one place that knows CPU vs CUDA
notices.py       known third-party notices, hidden unless --verbose
"""

__version__ = "0.1.0"
