"""The tokenizer: `load` (run time), `train` and `fertility` (`chatbaker tokenizer train`, `cli`)."""
