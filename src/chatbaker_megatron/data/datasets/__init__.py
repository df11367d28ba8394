"""What training reads.

pretrain.py       the configured blend -> megatron GPTDatasets for train/valid/test
index_cache.py    megatron's sample index cache built on every node
indexed_files.py  the .bin/.idx layout, written and read with numpy alone
integrity.py      a dataset's .bin checked against its .idx before training
meta.py           the .meta.json sidecar and the dataset-tokenizer check
sft.py            conversations -> packed (or padded) training sequences
packing.py        whole-turn truncation, best-fit-decreasing packing
preference.py     chosen/rejected pairs -> one training sequence per pair
"""
