# The two commands of the README. Both set up what is missing first (scripts/setup.sh).
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: run test setup

run: setup          ## run the whole pipeline on the embedded default dataset
	.venv/bin/dvc repro

test: setup         ## run the test suite (what CI runs)
	.venv/bin/python -m pytest -q

setup:
	scripts/setup.sh
