"""The checkpoint format: sharded, atomic, reshardable, on megatron-core dist_checkpointing.

layout.py       iter_NNNNNNN/ directories, the fsynced `latest` marker, pruning
state.py        what a checkpoint holds: model, optimizer, RNG, TrainState, run config
save.py         the atomic write; a full training checkpoint or model weights only
load.py         resume (model, optimizer, scheduler, RNG) or weights only, at any TP/PP/DP
reader.py       a checkpoint's model tensors, one layer at a time, in any process
run_config.py   the run config stored in a checkpoint: model, tokenizer, chat template
tp1_model.py    a checkpoint's model built in this process at TP=1, PP=1 (generation)
"""
