# chatbaker_megatron: `make demo` and `make test` work on a fresh machine
# (they set up .venv first). See README.md.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A Python >= 3.12 (megatron-core 0.19 needs it); override with PYTHON=/path/to/python3.12.
PYTHON ?= $(shell scripts/find-python.sh)
PYTEST_ARGS ?=
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: setup browser test demo demo-hf demo-chat demo-curate demo-eval-chat demo-dpo lint format check-cuda lint-docker ci clean gpu-check gpu-wheels

setup: $(STAMP)

# Prints nothing but errors and pip's own warnings. Pinned versions:
# constraints.txt (regenerate with `pip freeze` after an upgrade). setuptools
# ends every editable install with a notice about folders named like the
# package shadowing it (none here: the packages live in src/, kernels/, conf/).
$(STAMP): setup.py pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { scripts/find-python.sh; exit 1; }
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip
	@PYTHONWARNINGS="ignore:Editable installation" $(PIP) install -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The browser test (tests/serve/test_browser.py) drives Debian's chromium with
# chromium-driver through selenium; fonts-nanum draws the Korean in its
# screenshot. As root on Debian (CI: a fresh Debian 12) the missing ones are
# installed; elsewhere, without the two programs, that test is skipped and says why.
BROWSER_PACKAGES := chromium chromium-driver fonts-nanum
browser:
	@if [ "$$(id -u)" = 0 ] && grep -qx 'ID=debian' /etc/os-release 2>/dev/null; then \
	  missing=$$(for p in $(BROWSER_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "== apt-get install" $$missing "(the browser test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null || exit 1; \
	  fi; \
	elif ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then \
	  echo "note: no /usr/bin/chromium or /usr/bin/chromedriver (Debian: apt-get install" \
	    "$(BROWSER_PACKAGES)): tests/serve/test_browser.py will be skipped"; \
	fi

# The whole suite. pytest exits 5 when it collected nothing: that is a failure here.
test: setup browser
	@set +e; $(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Train the tiny model on the bundled Korean/English corpus on 2 CPU ranks:
# 150 iterations, stop with a checkpoint, resume from it to 300.
demo: setup
	rm -rf runs/demo
	$(BIN)/chatbaker train run_dir=runs/demo train.exit_interval=150
	@echo "== stopped at iteration 150 with a checkpoint; resuming from it"
	$(BIN)/chatbaker train run_dir=runs/demo
	@echo "== metrics:     runs/demo/metrics.jsonl (TensorBoard: runs/demo/tensorboard)"
	@echo "== checkpoints: runs/demo/checkpoints (latest -> $$(cat runs/demo/checkpoints/latest))"

# After `make demo`: export to Hugging Face (checking logits against
# transformers), generate, and evaluate on the bundled local task samples.
demo-hf: setup
	test -f runs/demo/checkpoints/latest || $(MAKE) demo
	$(BIN)/chatbaker export-hf --checkpoint runs/demo/checkpoints --output runs/demo/hf --overwrite --verify
	$(BIN)/chatbaker generate --hf runs/demo/hf --prompt "대한민국은" --max-new-tokens 30 --greedy
	$(BIN)/chatbaker eval --hf runs/demo/hf --tasks kobest_local,english_local --output runs/demo/eval
	@echo "== chat with it: $(BIN)/chatbaker chat --hf runs/demo/hf"

# The chat server and web page on the `make demo` model (trained first if
# missing); prints the page's URL and a curl line. PORT=8000 by default.
PORT ?= 8000
demo-chat: setup
	test -f runs/demo/checkpoints/latest || $(MAKE) demo
	$(BIN)/chatbaker serve --checkpoint runs/demo/checkpoints --model-name chatbaker-demo --port $(PORT)

# Curation: make the raw sample (the bundled corpus plus planted faults:
# docs/curate.md), curate it on this machine (prints the report), then tokenise
# its Korean and English output with `chatbaker preprocess` (the demo tokenizer).
demo-curate: setup
	rm -rf runs/demo_curate
	$(BIN)/python -m chatbaker_megatron.data.curate.raw_sample runs/demo_curate/raw
	$(BIN)/chatbaker curate input=runs/demo_curate/raw output=runs/demo_curate/curated
	$(BIN)/chatbaker prepare-data data.root=runs/demo_curate/demo_data
	for lang in ko en; do \
	  $(BIN)/chatbaker preprocess --input runs/demo_curate/curated/$$lang/*.jsonl \
	    --tokenizer runs/demo_curate/demo_data/tokenizer \
	    --output-prefix runs/demo_curate/pretrain_$$lang --no-progress || exit 1; \
	done
	@echo "== report: runs/demo_curate/curated/report.md (+ .json, .png); datasets: runs/demo_curate/pretrain_{ko,en}"

# Chat evaluation (docs/eval.md, "Chat models"): the demo PLM (`make demo`) and
# its chat fine-tune (trained here when missing) served side by side, their
# answers scored offline with the judge-free chrF metric; report and chart in
# runs/eval_chat (the servers' logs too). The servers stop with the target.
demo-eval-chat: setup
	test -f runs/demo/checkpoints/latest || $(MAKE) demo
	test -f runs/demo_sft/checkpoints/latest || $(BIN)/chatbaker train data=sft_demo train=sft \
	  train.init_from=runs/demo/checkpoints run_dir=runs/demo_sft
	rm -rf runs/eval_chat && mkdir -p runs/eval_chat
	@$(BIN)/chatbaker serve --checkpoint runs/demo/checkpoints --model-name demo-plm --port 8101 \
	  > runs/eval_chat/serve-plm.log 2>&1 & plm=$$!; \
	$(BIN)/chatbaker serve --checkpoint runs/demo_sft/checkpoints --model-name demo-sft --port 8102 \
	  > runs/eval_chat/serve-sft.log 2>&1 & sft=$$!; \
	trap 'kill $$plm $$sft 2>/dev/null' EXIT; \
	for port in 8101 8102; do \
	  for i in $$(seq 180); do curl -sf http://127.0.0.1:$$port/health >/dev/null && break; sleep 1; done; \
	done; \
	$(BIN)/chatbaker eval-chat output=runs/eval_chat

# Preference tuning (docs/training.md, "Preference tuning"): the demo SFT model
# (trained here when missing) -> DPO on the bundled 200 pairs; prints the
# held-out figures before and after, and greedy replies to identity prompts
# from both models.
IDENTITY_PROMPTS = "너는 누구야?" /reset "Who are you?" /reset "Are you ChatGPT?"
demo-dpo: setup
	test -f runs/demo/checkpoints/latest || $(MAKE) demo
	test -f runs/demo_sft/checkpoints/latest || $(BIN)/chatbaker train data=sft_demo train=sft \
	  train.init_from=runs/demo/checkpoints run_dir=runs/demo_sft
	rm -rf runs/demo_dpo
	$(BIN)/chatbaker train data=dpo_demo train=dpo train.init_from=runs/demo_sft/checkpoints \
	  optim.lr=2e-4 optim.warmup_iters=3 run_dir=runs/demo_dpo
	$(BIN)/python -m chatbaker_megatron.training.preference_report runs/demo_dpo
	@for run in demo_sft demo_dpo; do \
	  echo "== $$run: greedy replies to" $(IDENTITY_PROMPTS); \
	  printf '%s\n' $(IDENTITY_PROMPTS) | $(BIN)/chatbaker chat --checkpoint runs/$$run/checkpoints \
	    --greedy --max-new-tokens 40 || exit 1; \
	done

# ruff, the layer contracts (.importlinter), then mypy type-checks
# src/chatbaker_megatron and kernels/ (the settings: [tool.mypy] in
# pyproject.toml; its cache, .mypy_cache/, is git-ignored).
lint: setup
	$(BIN)/ruff check src kernels tests benchmarks conf scripts
	$(BIN)/ruff format --check src kernels tests benchmarks scripts
	$(BIN)/lint-imports
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix src kernels tests benchmarks scripts
	$(BIN)/ruff format src kernels tests benchmarks scripts

# Compile the CUDA kernels with nvcc for sm_80 and sm_90 (compile only; no GPU needed).
check-cuda: setup
	PYTHON=$(BIN)/python scripts/check-cuda.sh

lint-docker: setup
	$(BIN)/hadolint Dockerfile

# On a machine with one or two NVIDIA GPUs and no network: install from
# .gpu-wheels, then kernels, benchmarks, training, HF export, NCCL tests;
# report in $(OUT) (docs/gpu.md). Without a GPU it says so and fails at once.
gpu-check:
	scripts/gpu-check.sh $(if $(OUT),--out $(OUT))

# Where PyPI is reachable: the wheels gpu-check installs (.gpu-wheels/, ~3 MB).
gpu-wheels: setup
	PYTHON=$(BIN)/python scripts/gpu-wheels.sh

ci: test lint check-cuda lint-docker

clean:
	rm -rf runs multirun outputs .pytest_cache
