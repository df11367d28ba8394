"""`chatbaker curate`: raw JSONL/Parquet -> clean, deduplicated, PII-scrubbed JSONL per language.

A datatrove job (docs/curate.md): datatrove's readers, writers, Gopher/C4
filters, PII replacer, exact and MinHash dedup stages and executors do the
work; the modules here add what datatrove lacks for Korean-English corpora
and wire the stages (`pipeline.py`).
"""
