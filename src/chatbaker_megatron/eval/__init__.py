"""Evaluation with lm-evaluation-harness on an exported Hugging Face folder.

suites.py      which tasks --tasks names; the local sample tasks in tasks/
tasks/         the local sample tasks (lm-eval YAML and data)
metrics.py     the macro F1 aggregation the local KoBEST tasks use
runner.py      lm-eval's simple_evaluate with HFLM
report.py      results table (markdown + json) and bar chart
references.py  published figures the report sets our results next to
cli.py         `chatbaker eval`
"""
