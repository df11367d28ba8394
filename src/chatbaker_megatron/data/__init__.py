"""Data, by job (see docs/data.md):

- curate/: raw crawls -> clean, deduplicated, PII-scrubbed JSONL per language (datatrove);
- tokenizer/: train the byte-level BPE tokenizer, load it, measure fertility;
- preprocess/: raw text and conversations -> megatron indexed datasets;
- datasets/: what training reads: the pretraining blend, SFT packing, the index cache;
- demo/: the bundled sample corpus and its preparation (before any rank starts);
- corpus.py: reading raw .jsonl/.txt inputs (tokenizer training and preprocessing);
- templates.py: chat templates (tokenizer files, SFT tokenisation, serving prompts);
- scripts.py: the share of a text's letters that are Hangul or Latin (curation, eval-chat);
- executors.py: datatrove's local or SLURM executor from an `ExecutorConfig` (curate, preprocess).

Nothing is imported here, so that importing one light module (e.g. the
preprocessing workers') does not pull in megatron.
"""
