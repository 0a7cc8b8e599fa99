# The two commands of the README. Both set up what is missing first (scripts/setup.sh).
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
# Two intra-op threads: dvc repro runs one stage at a time, and a stage that splits its work across
# both cores (tinycap/parallel.py) drops to one thread per process while it does. Measured here: one
# CLIP epoch 16.2 s with one thread, 9.5 s with two. The thread count changes float rounding, so the
# committed models are those of two threads; on a machine busy with other work, make run OMP_NUM_THREADS=1
# (OpenMP spin-waiting on a busy core once made training 10-25x slower), which gives slightly other models.
export OMP_NUM_THREADS ?= 2
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: run test setup

run: setup          ## run the whole pipeline on the embedded default dataset, then push outputs + run cache to the DVC remote
	.venv/bin/dvc repro
	.venv/bin/dvc push --run-cache

test: setup         ## lint, format check, then the test suite (what CI runs)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q

setup:
	scripts/setup.sh
