"""What training reads: the pretraining blend (`pretrain`, `index_cache`), SFT sequences
(`sft`, `packing`) and the check that a dataset matches the tokenizer (`meta`)."""
