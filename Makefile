# The two commands of the README. Both set up what is missing first (scripts/setup.sh).
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
# One intra-op thread: the models are small, and with two threads on a 2-core machine that is also
# doing anything else, OpenMP's spin-waiting made training 10-25x slower. Override: make run OMP_NUM_THREADS=2
export OMP_NUM_THREADS ?= 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: run test setup

run: setup          ## run the whole pipeline on the embedded default dataset
	.venv/bin/dvc repro

test: setup         ## lint, format check, then the test suite (what CI runs)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q

setup:
	scripts/setup.sh
