"""Writing training data: `pipeline.preprocess` (`chatbaker preprocess`, `cli`) streams inputs
through encoding workers (`encode_pool`, `encode_worker`; SFT conversations via
`conversations` and `sft_tokenize`) into megatron indexed datasets (`indexed_writer`)."""
