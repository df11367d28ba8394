"""Data: tokenizer, preprocessing, pretraining blend, SFT conversations (see docs/data.md).

Entry points: tokenizer.load_tokenizer, prepare.prepare_data / prepare_demo_data,
pretrain.build_pretrain_datasets, sft.build_sft_datasets, templates.render_prompt;
the `chatbaker tokenizer train` and `chatbaker preprocess` verbs live in
tokenizer_cli and preprocess. Nothing is imported here, so that importing one
light module (e.g. the preprocessing workers') does not pull in megatron.
"""
