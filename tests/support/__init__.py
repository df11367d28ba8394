"""Code the tests and benchmarks share, kept out of the installed package.

tiny_model.py        the tiny LLaMA every multi-rank test builds, and its fixed random batches
tiny_checkpoints.py  its tokenizer, checkpoints at each layout and HF folders (convert, inference, eval)
fixtures.py          the session fixtures built from those (registered in tests/conftest.py)
counters.py          counters for saved tensors, collectives and the pipeline schedule
plan_validation.py   measured-vs-predicted cases of the planner on the real model
scratch_install.py   build the wheel and install it outside the tree (packaging, gpu-check)
add_norm.py          chatbaker_kernels' fused add+RMSNorm per backend (kernel tests, benchmark)
device_rules.py      NCCL's device rules on CPU, the suite's test mode (installed by tests/conftest.py)
site/                sitecustomize.py: installs that mode in every interpreter the suite starts
"""
