"""Writing training data: raw inputs -> megatron indexed datasets, importing neither torch
nor megatron.

cli.py                  `chatbaker preprocess`
pipeline.py             `preprocess()`: inputs through the encoding workers into one dataset
encode_pool.py          the parent side: chunks out, encoded chunks back in order
encode_worker.py        the worker side: one chunk of records in, flat token arrays out
indexed_writer.py       atomic output: a partial dataset never looks complete
disk_space.py           a full or read-only output filesystem as one line
conversations.py        ShareGPT / Vicuna records -> validated messages
sft_tokenize.py         a conversation -> token ids and target flags
preference_pairs.py     preference records in their layouts -> (prompt, chosen, rejected)
preference_tokenize.py  both sides of a pair with their reply flags
scaleout.py             `--tasks N`: the same as a datatrove job, then one merge
scaleout_cli.py         the scale-out options and that path's run
byte_ranges.py          one big file cut into line-aligned ranges for the tasks
"""
