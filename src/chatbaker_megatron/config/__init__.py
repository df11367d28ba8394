"""Structured config schemas (one dataclass per Hydra group) and their validation.

Each dataclass is the one home of its group's defaults (conf/*.yaml hold only
what differs), validates itself (`validate()`) and owns its derived values.

schema.py      the root `RunConfig`, its registration with Hydra, cross-group checks
checks.py      declared ranges and choices (`bounded`, `Choice`), unknown keys refused
compose.py     compose a config tree outside a Hydra app; override keys checked first
model.py       the `model` group: the LLaMA architecture
parallel.py    the `parallel` group: TP/PP/VPP/DP layout and the overlaps, decided once
cluster.py     the `cluster` group: nodes, devices, precision, pre-flight
data.py        the `data` group: pretraining blend, SFT or preference data
train.py       the `train` group: budget, batch, evaluation, health policies
optim.py       the `optim` group: Adam and the learning-rate schedule
checkpoint.py  the `checkpoint` group: intervals, formats, resume
logging.py     the `logging` group: metrics, TensorBoard, W&B
launch.py      the `launch` group: torchrun's restart budget and monitoring
executor.py    where a datatrove job runs (local processes or SLURM)
curate.py      `chatbaker curate`'s config
eval_chat.py   `chatbaker eval-chat`'s config
"""
