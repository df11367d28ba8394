"""`chatbaker eval-chat`: chat models judged by an LLM (MT-bench style), Korean-aware.

A client of OpenAI-compatible endpoints only (`chatbaker serve`, vLLM, hosted
APIs): it never loads a model itself (docs/eval.md, "Chat models").

questions.py   question.jsonl files; the bundled Korean and English sets (questions/)
language.py    the answer-language check (curate's Hangul/Latin measure)
client.py      chat calls with bounded retries and backoff
answers.py     each model answers each question's turns (model_answer/)
prompts.py     the judge prompts (judge_prompts.yaml) and verdict parsing
judging.py     single grades, pairwise verdicts in both orders, chrF (model_judgment/)
store.py       the append-only JSONL caches a run resumes from
runner.py      one run: answers, judgments, on a thread pool with progress bars
plan.py        --dry-run: calls and tokens a run will use
stats.py       bootstrap intervals, Bradley-Terry ratings
report.py      report.json, report.md, report.png
cli.py         `chatbaker eval-chat [--dry-run] [overrides]` (conf/eval_chat.yaml)
"""
