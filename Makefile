# make setup | train | test | test-fast | study | tasks | budget | search | bench | tensorboard | dashboard
# | cluster | cluster-stop | lint | clean
# `make train`, `make test` and `make test-fast` set everything up first when needed (venv,
# package, data). `make test` runs the whole suite (as CI does); `make test-fast` leaves out
# the tests marked slow (the command line, sweeps, make study, longer training): under a
# minute, for the edit-test loop.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
SEEDS  ?= 0
ifndef STUDY_DIR
STUDY_DIR := outputs/study/$(shell date +%Y-%m-%d_%H-%M-%S)
endif
EXPERIMENTS := architecture learning_rate batch_size weight_init augmentation cross_validation momentum

.PHONY: setup data train test test-fast study tasks budget search bench tensorboard dashboard \
	cluster cluster-stop lint clean

setup: $(STAMP) data

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST: already found (data.root / $$FMNIST_DATA / Debian's package / data/)?
# Else Debian's dataset-fashion-mnist where apt works, else torchvision's download.
data: $(STAMP)
	@$(PY) -m fmnist_lab.data 2>/dev/null || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; \
	  $(PY) -m fmnist_lab.data; }

train: setup
	$(PY) -m fmnist_lab.train $(ARGS)

# Every experiment of the study into one folder, one seed at a time (seed 0 of everything
# first), then one report over all of it: STUDY_DIR/EXPERIMENT/seed_S/JOB. A configuration
# and seed is trained once: the others reuse it (reuse_runs_in). A run that fails does not
# stop the others; the exit code says so at the end. Re-running with the same STUDY_DIR
# skips finished runs and resumes interrupted ones. fp32 unless PRECISION says otherwise
# (bf16-mixed on a GPU, or a CPU with bf16 instructions: docs/performance.md): the precision
# is part of a run's identity, so a study continues in the one it was recorded in
# (results/study: fp32), whatever the machine that continues it.
PRECISION ?= 32-true
# JOBS sweeps side by side, each training one run at a time with cores/JOBS torch threads
# (xargs -P): on a CPU, one-thread runs side by side train more images a second in all than
# one run with every thread (docs/performance.md). Whole sweeps rather than one sweep's jobs
# side by side, so no core idles while a sweep's last run finishes. A run two sweeps share (the default config) is
# trained by the first to reach it; the other waits for it, then reuses it (claim_config).
# One at a time where there is a GPU, which one run keeps busy.
JOBS ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1 || echo 2)
CORES := $(shell nproc 2>/dev/null || echo 1)
THREADS := $(shell n=$$(( $(CORES) / $(JOBS) )); echo $$(( n > 0 ? n : 1 )))
# LAUNCHER=slurm_cpu (or slurm): the record targets below submit their runs to SLURM, a job a
# run (hydra/launcher=LAUNCHER; its settings as hydra.launcher.KEY=... in ARGS), JOBS sweeps
# submitting side by side; a job's torch threads are its CPUs. A run that sweeps share is still
# trained once: its claim (claim_config) is a file below the record's folder, on the shared
# disk. Unset: the runs train on this machine (docs/cluster.md).
LAUNCHER ?=
LAUNCH_ARGS := $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER))
# Unless ARGS sets them: one-thread runs (here; a SLURM job's threads are its CPUs), and no
# progress bars interleaved from two sweeps.
STUDY_ARGS := $(if $(or $(LAUNCHER),$(findstring num_threads=,$(ARGS))),,num_threads=$(THREADS)) \
	$(if $(or $(filter 1,$(JOBS)),$(findstring enable_progress_bar=,$(ARGS))),,trainer.enable_progress_bar=false) \
	$(LAUNCH_ARGS)
study: setup
	@status=0; \
	for s in $$(echo $(SEEDS) | tr , ' '); do for e in $(EXPERIMENTS); do echo "$$s $$e"; done; done | \
	  xargs -P $(JOBS) -L 1 sh -c '$(PY) -m fmnist_lab.train -m experiment=$$1 seed=$$0 \
	    trainer.precision=$(PRECISION) hydra.sweep.dir=$(STUDY_DIR)/$$1/seed_$$0 \
	    reuse_runs_in=$(STUDY_DIR) $(STUDY_ARGS) $(ARGS)' || status=1; \
	$(PY) -m fmnist_lab.report $(STUDY_DIR) || status=1; \
	exit $$status

# The seed's hypothesis across tasks (experiment=tasks, conf/task/) into TASKS_DIR: one sweep
# of the 15 one-at-a-time configurations per task and seed, TASKS_DIR/TASK/seed_S/JOB, and
# the control (fmnist_1k at seeds 3-5) in TASKS_DIR/control/seed_S; JOBS of them side by side
# as in make study, the costly tasks first. fmnist_55k reuses results/study's runs
# (reuse_runs_in), so the record trains in fp32 as the study did (trainer.precision is part of
# a run's identity); data.channels_last is a speed switch (not in a run key), faster on CPUs.
# Re-running with the same TASKS_DIR skips finished runs and resumes the others.
TASKS_DIR ?= results/tasks
TASK_ORDER ?= fmnist_5k fmnist_5k_noisy fmnist_5k_7px fmnist_5k_upper fmnist_1k digits fmnist_55k
TASK_SEEDS ?= 0,1,2
CONTROL_SEEDS ?= 3,4,5
tasks: setup
	@status=0; \
	{ for s in $$(echo $(TASK_SEEDS) | tr , ' '); do for t in $(TASK_ORDER); do \
	    echo "tasks $$t $$s $(TASKS_DIR)/$$t/seed_$$s"; done; \
	  c=$$(echo $(CONTROL_SEEDS) | cut -d, -f$$(( $$s + 1 ))); \
	  [ -n "$$c" ] && echo "tasks_control fmnist_1k $$c $(TASKS_DIR)/control/seed_$$c"; done; } | \
	  xargs -P $(JOBS) -L 1 sh -c '$(PY) -m fmnist_lab.train -m experiment=$$0 task=$$1 seed=$$2 \
	    data.channels_last=true hydra.sweep.dir=$$3 \
	    reuse_runs_in=[$(TASKS_DIR),$(STUDY_RECORD)] $(STUDY_ARGS) $(ARGS)' || status=1; \
	$(PY) -m fmnist_lab.report $(TASKS_DIR) || status=1; \
	exit $$status
STUDY_RECORD ?= results/study

# Data or steps? (experiment=budget) into BUDGET_DIR: one sweep of the five learning rates per
# task, step budget and seed, BUDGET_DIR/TASK/steps_N/seed_S/JOB, seed 0 of every cell first
# and the longest budgets first within a seed (JOBS lanes as in make study), then its report,
# whose cells that repeat the tasks protocol are set beside TASKS_DIR's runs. Re-running with
# the same BUDGET_DIR skips finished runs and resumes the others mid-budget.
BUDGET_DIR ?= results/budget
BUDGET_TASKS ?= fmnist_55k fmnist_5k fmnist_1k
BUDGET_STEPS ?= 2000 400 80
BUDGET_SEEDS ?= 0,1,2
budget: setup
	@status=0; \
	for s in $$(echo $(BUDGET_SEEDS) | tr , ' '); do for n in $(BUDGET_STEPS); do \
	  for t in $(BUDGET_TASKS); do echo "$$t $$n $$s"; done; done; done | \
	  xargs -P $(JOBS) -L 1 sh -c '$(PY) -m fmnist_lab.train experiment=budget task=$$0 \
	    trainer.max_steps=$$1 seed=$$2 data.channels_last=true \
	    hydra.sweep.dir=$(BUDGET_DIR)/$$0/steps_$$1/seed_$$2 reuse_runs_in=$(BUDGET_DIR) \
	    $(STUDY_ARGS) $(ARGS)' || status=1; \
	$(PY) -m fmnist_lab.report $(BUDGET_DIR) --tasks $(TASKS_DIR) || status=1; \
	exit $$status

# What pruning saves (SEARCH_DIR): the same search of SEARCH_TRIALS trials twice, same sampler
# seed, on fmnist_5k (5,000 training images, 10 epochs), once with median pruning and once
# with none, side by side (one lane each: the same machine load for both), then each search's
# best configuration trained at seeds 0-2 (seed 0 is its trial, reused; where both searches
# find the same configuration, its seeds train once for both) for its test accuracy.
# Re-running with the same SEARCH_DIR continues each search and skips finished runs.
SEARCH_DIR ?= results/search
SEARCH_TRIALS ?= 40
SEARCH_TASK ?= fmnist_5k
search: setup
	@status=0; \
	printf 'median median\nnop none\n' | xargs -P $(JOBS) -L 1 sh -c '$(PY) -m fmnist_lab.train \
	    hparams_search=optuna task=$(SEARCH_TASK) hydra/sweeper/pruner=$$0 \
	    hydra.sweeper.n_trials=$(SEARCH_TRIALS) hydra.sweep.dir=$(SEARCH_DIR)/$$1 \
	    data.channels_last=true $(STUDY_ARGS) $(ARGS)' || status=1; \
	printf 'median\nnone\n' | xargs -P $(JOBS) -I @ sh -c 'eval "$(PY) -m fmnist_lab.train -m \
	    $$($(PY) -m fmnist_lab.search best $(SEARCH_DIR)/@) name=best_@ seed=0,1,2 \
	    hydra.sweep.dir=$(SEARCH_DIR)/@/best reuse_runs_in=$(SEARCH_DIR) \
	    data.channels_last=true $(STUDY_ARGS) $(ARGS)"' || status=1; \
	$(PY) -m fmnist_lab.report $(SEARCH_DIR) || status=1; \
	exit $$status

# A one-node SLURM cluster (munge, slurmctld, slurmd) and a PostgreSQL server with a database
# for optuna on this machine (Debian, root; apt installs what is missing): for trying the
# cluster path and for tests/test_cluster.py, which start it themselves. Safe to run again; it
# prints the partition and the storage URL. cluster-stop stops what cluster started.
cluster:
	@scripts/cluster.sh start

cluster-stop:
	@scripts/cluster.sh stop

# tests/test_cluster.py starts the local cluster (scripts/cluster.sh, as make cluster) when it
# is not up, so make test runs them on a fresh machine too (as root, with apt).
# The suite's tests mostly start a Python that imports torch and Lightning (seconds of one
# core each): two pytest workers on two cores, a thread each, take 6 minutes where one takes 12.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
test: setup
	$(PY) -m pytest -q -n $(TEST_JOBS) $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: setup
	$(PY) -m fmnist_lab.bench $(ARGS)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir outputs

# optuna-dashboard on a search's study (hparams_search=optuna keeps it in DIR/optuna.journal):
# `make dashboard DIR=outputs/multirun/optuna/2026-...` prints its address; PORT=0 picks a free
# port, HOST=0.0.0.0 listens beyond this machine. Ctrl-C stops it.
PORT ?= 8080
HOST ?= 127.0.0.1
dashboard: $(STAMP)
	@test -n "$(DIR)" || { echo "error: DIR=<a search's sweep folder> is required" >&2; exit 2; }
	$(PY) -m fmnist_lab.search dashboard $(DIR) --port $(PORT) --host $(HOST)

lint: $(STAMP)
	$(VENV)/bin/ruff check fmnist_lab tests hydra_plugins

clean:
	rm -rf outputs lightning_logs .pytest_cache
