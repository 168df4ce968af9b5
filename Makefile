# resnet-repro: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ImageNet training: make train-imagenet DATA=/path/to/imagenet GPUS=8 [ARGS="extra overrides"]
DATA ?=
GPUS ?= 1
ARGS ?=
# make expands a `$` in ARGS before the shell or resnet-repro sees it (`${oc.env:X}` would become
# nothing, silently): refused, unless written `$$`
ifneq ($(findstring $$,$(subst $$$$,,$(value ARGS))),)
$(error ARGS=$(value ARGS): make would expand its '$$' (here to nothing) before resnet-repro sees it; write it as '$$$$' inside single quotes (ARGS="'key=$$$${oc.env:VAR}'"), or run .venv/bin/resnet-repro with the overrides directly)
endif
DEMO_RUN := runs/demo/make-demo

.DEFAULT_GOAL := help

.PHONY: help install demo test test-fast lint format tensorboard train-imagenet sweep sweep-slurm gpu-kit clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with dev extras

demo: $(STAMP) ## build the digits demo data, train ResNet-18 on it (~2.5 min on 2 cores), evaluate (ARGS=...: more overrides)
	rm -rf $(DEMO_RUN)
	$(BIN)/resnet-repro train hydra.run.dir=$(DEMO_RUN) $(ARGS)
	@echo "--- re-evaluating $(DEMO_RUN)/checkpoints/last.pt"
	$(BIN)/resnet-repro eval checkpoint=$(DEMO_RUN)/checkpoints/last.pt

# The real SLURM clusters' scenarios keep both cores busy and time their signals: they run alone
# first; then the rest on two pytest-xdist workers, a test file to each (module fixtures stay whole).
# Both sessions run, and either failing fails the target.
XDIST := -n 2 --dist loadfile

test: $(STAMP) ## run the whole test suite: the real SLURM clusters, then the rest on two workers (the slowest of each listed)
	$(BIN)/pytest -q -m slurm --durations=6; slurm=$$?; \
	$(BIN)/pytest -q -m "not slurm" $(XDIST) --durations=12; rest=$$?; \
	exit $$(( slurm ? slurm : rest ))

test-fast: $(STAMP) ## run the tests not marked slow (on two workers)
	$(BIN)/pytest -q -m "not slow" $(XDIST)

lint: $(STAMP) ## ruff check and format check; the import layers (import-linter's contracts in pyproject.toml)
	$(BIN)/ruff check resnet_repro hydra_plugins tests scripts
	$(BIN)/ruff format --check resnet_repro hydra_plugins tests scripts
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix resnet_repro hydra_plugins tests scripts
	$(BIN)/ruff format resnet_repro hydra_plugins tests scripts

# TensorBoard listens on this machine only (reach it from a laptop with `ssh -L 6006:localhost:6006 HOST`);
# HOST=0.0.0.0 serves every interface: anyone who can reach the port sees the runs. `:=`, so an
# exported HOST variable of the shell (tcsh sets one to the host name) cannot widen it by accident.
HOST := 127.0.0.1
PORT := 6006
tensorboard: $(STAMP) ## serve TensorBoard over runs/ and multiruns/ on localhost:6006 (HOST=0.0.0.0: all interfaces)
	@[[ "$(PORT)" =~ ^[0-9]{1,5}$$ ]] && (( 10#$(PORT) >= 1 && 10#$(PORT) <= 65535 )) || { echo "error: PORT=$(PORT): expected a port number from 1 to 65535"; exit 2; }
	$(BIN)/tensorboard --logdir . --port $(PORT) --host $(HOST)

# The recipe's global batch 256 (trainer.global_batch) is split over the GPUS devices. The run
# directory runs/<experiment>/cfg-<hash> is named after the run's settings: the same make command
# run again (after a stop, a crash or a reboot) resumes it (docs/cluster.md, "Rerunning resumes")
train-imagenet: $(STAMP) ## torchvision's ResNet-50 recipe (EXPERIMENT=he2016: the paper as written): make train-imagenet DATA=/path/to/imagenet GPUS=8
	@test -n "$(DATA)" || { echo "error: set DATA=/path/to/imagenet (with train/ and val/ inside)"; exit 2; }
	$(BIN)/resnet-repro train experiment=$(EXPERIMENT) 'data.root=$(DATA)' trainer.nproc=$(GPUS) $(ARGS)

# Sweep grid: weight decay x max norm (null = no clipping); override e.g. WD=1e-4,5e-5 MAX_NORM=null,1
WD ?= 1e-4,5e-5,2e-4
MAX_NORM ?= null,1,2,5
EXPERIMENT ?= imagenet_paper
PARTITION ?=
# SEEDS=3: every point trained with seeds 0, 1, 2 (a trainer.seed axis), so `resnet-repro report`
# can tell a difference from seed noise
SEEDS ?= 1
SEEDS_OK = $(shell [[ "$(SEEDS)" =~ ^[1-9][0-9]*$$ ]] && echo yes)
SEED_AXIS = $(if $(SEEDS_OK),$(if $(filter-out 1,$(SEEDS)),trainer.seed=$(shell seq -s, 0 $$(( $(SEEDS) - 1 )))))
CHECK_SEEDS = @test -n "$(SEEDS_OK)" || { echo "error: SEEDS=$(SEEDS): expected a whole number of seeds >= 1 (SEEDS=3: seeds 0, 1, 2)"; exit 2; }
# Values in single quotes: a path or a list with spaces stays one override
sweep: $(STAMP) ## local multirun: weight decay x max norm, one job after another (EXPERIMENT=demo works here)
	$(CHECK_SEEDS)
	$(BIN)/resnet-repro train -m experiment=$(EXPERIMENT) \
		$(if $(DATA),'data.root=$(DATA)') trainer.nproc=$(GPUS) \
		'optim.weight_decay=$(WD)' 'stabilizer.max_norm=$(MAX_NORM)' $(SEED_AXIS) $(ARGS)

# GPUS given on the command line sets each job's tasks and GPUs per node (else the launcher's 8)
sweep-slurm: $(STAMP) ## the same sweep on SLURM via submitit: make sweep-slurm DATA=... PARTITION=gpu
	$(CHECK_SEEDS)
	$(BIN)/resnet-repro train -m hydra/launcher=slurm experiment=$(EXPERIMENT) $(if $(DATA),'data.root=$(DATA)') \
		$(if $(PARTITION),'hydra.launcher.partition=$(PARTITION)') \
		$(if $(filter command line,$(origin GPUS)),hydra.launcher.tasks_per_node=$(GPUS) hydra.launcher.gpus_per_node=$(GPUS)) \
		'optim.weight_decay=$(WD)' 'stabilizer.max_norm=$(MAX_NORM)' $(SEED_AXIS) $(ARGS)

# The GPU node's kit, in the checkout (gpu_kit/ is git-ignored): the JPEG sample as a plain folder
# (scripts/gpu_check.py reads gpu_kit/imagenet-sample first; SAMPLE=... for another one), the wheels
# of scripts/gpu_kit.lock.json (what the node lacks, pinned), cut into one folder of parts per device
# call (gpu_kit/parts/callN), and gpu_kit/plan.json: the calls in order (docs/install.md).
SAMPLE ?= ../shared/data/imagenet-sample

gpu-kit: $(STAMP) ## the GPU node's kit: sample, locked wheels in parts per device call, gpu_kit/plan.json
	@test -d "$(SAMPLE)/train" || { echo "error: no sample at SAMPLE=$(SAMPLE) (expected an ImageNet-layout folder with train/)"; exit 2; }
	rm -rf gpu_kit/imagenet-sample gpu_kit/wheels gpu_kit/parts gpu_kit/plan.json
	mkdir -p gpu_kit
	cp -r "$(SAMPLE)" gpu_kit/imagenet-sample
	@echo "gpu_kit/imagenet-sample: $$(find gpu_kit/imagenet-sample -type f | wc -l) files, $$(du -sh gpu_kit/imagenet-sample | cut -f1)"
	bash scripts/wheelhouse.sh gpu_kit/wheels --python 3.12
	bash scripts/wheelhouse.sh --pack gpu_kit/wheels --kit gpu_kit/parts --sample gpu_kit/imagenet-sample --plan gpu_kit/plan.json

clean: ## remove runs/, multiruns/, rehearsals/ and caches (not .venv)
	rm -rf runs multiruns rehearsals .pytest_cache .ruff_cache
