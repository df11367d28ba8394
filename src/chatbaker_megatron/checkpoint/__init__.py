"""The checkpoint format: sharded, atomic, reshardable, on megatron-core dist_checkpointing.

layout.py           iter_NNNNNNN/ directories, the fsynced `latest` marker, pruning
state.py            what a checkpoint holds: model, optimizer, RNG, TrainState, run config
manifest.py         each checkpoint's files, sizes and CRC-32s, verified before a load
save.py             the atomic write; a full training checkpoint or model weights only
background.py       a save written by background processes while training goes on
disk.py             room for the next checkpoint; save failures in one line
sizes.py            what each checkpoint format costs each rank in bytes
load.py             resume (model, optimizer, scheduler, RNG) or weights only, at any TP/PP/DP
resume_settings.py  resuming with changed optimizer settings (`optim.resume_schedule`)
reader.py           a checkpoint's model tensors, one layer at a time, in any process
run_config.py       the run config stored in a checkpoint: model, tokenizer, chat template
tp1_model.py        a checkpoint's model built in this process at TP=1, PP=1 (generation)
"""
