"""Training: the loop and the components it calls.

trainer.py            the loop, top to bottom: step, health, records, evaluation, saves, exit
engine.py             model chunks wrapped by megatron DDP, its optimizer and LR schedule
step.py               one step through megatron's schedules; per-token loss; NaN-aware update
batches.py            a global batch as this data-parallel rank's micro-batches
data.py               the datasets a run trains and validates on, sized for its budget
checkpointer.py       what a run starts from, when it saves, in which format and how
health.py             NaN and spike policies, fp16 overflows, stragglers: one skip path
reporter.py           a metrics row and a progress line every log interval
evaluator.py          validation every `train.eval_interval` iterations
metrics.py            config.yaml, metrics.jsonl, TensorBoard, W&B, tokens/s, MFU, ETA
watchdog.py           the hang watchdog (faulthandler as its backstop)
faults.py             fault injection for drills, installed as a wrapper only when configured
failures.py           errors a restart cannot heal, and how a rank ends the job on one
restarts.py           the metrics row of an in-job restart
preference.py         preference tuning on the step: reference log-probs, the objective
preference_loss.py    DPO, IPO and RPO on sequence log-probs
preference_report.py  a preference run's held-out figures before and after
dry_run.py            `chatbaker train --dry-run`: the real layout and its figures, no cluster
checkpoint_report.py  the dry run's checkpoint figures per rank and format
"""
