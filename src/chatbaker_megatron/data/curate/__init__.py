"""`chatbaker curate`: raw JSONL/Parquet -> clean, deduplicated, PII-scrubbed JSONL per language.

A datatrove job (docs/curate.md): datatrove's readers, writers, Gopher/C4
filters, PII replacer, exact and MinHash dedup stages and executors do the
work; the modules here add what datatrove lacks for Korean-English corpora
and wire the stages.

cli.py            `chatbaker curate`: the config, the run, the printed report
pipeline.py       the stages, their executors and the run
inputs.py         the input files and the first stage's readers, counting bad input
normalize.py      NFC, whitespace and control characters
language.py       KO / EN / other routing by script
words.py          words as the quality rules count them (eojeol for Korean)
quality.py        Gopher rules per language, boilerplate lines, the Korean particle rule
pii.py            PII replaced with tokens (e-mail, RRN, cards, phones, IPs)
dedup.py          exact and MinHash near-dedup with datatrove's stages
tally.py          documents and characters per language at a point of the stream
report.py         report.json, report.md and report.png from every stage's stats
output_folder.py  one output folder, one run
raw_sample.py     the raw demo corpus with planted faults and their ground truth
"""
