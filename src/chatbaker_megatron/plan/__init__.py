"""The planner behind `chatbaker plan`: which parallel layouts fit, and how fast they train.

workload.py    what is trained and how a layout splits it (pipeline geometry, schedule order)
activations.py bytes saved for backward, tensor by tensor, for the LLaMA layer
memory.py      bytes per GPU: weights, grads, optimizer state, activations, allowance
comm.py        bytes per step by process group and collective
steptime.py    seconds per step: compute, TP, pipeline p2p and bubble, DP, optimizer
reference.py   the frozen reference model of a preference run (train=dpo)
assumptions.py the stated assumptions: figures that are not hardware constants
candidates.py  enumerate the valid layouts of a run and rank them
report.py      the ranked table and its reasons, or JSON
cli.py         the `chatbaker plan` verb

Its checks against the real model (counters and cases) live in tests/support/.
"""
