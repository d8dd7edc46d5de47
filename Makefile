# mask_pstage: two commands.
#   make demo   set up .venv, generate the synthetic competition if missing, run the main job into outputs/demo/
#   make test   set up .venv and run the test suite's fast tier (make test-slow: the second tier; CI runs both)
#
# torch and torchvision are installed as a pinned pair first, then the rest, both with uv (the same versions as pip
# picks, in seconds instead of minutes; pip if uv fails). Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set
# (as on our CI machines), Python would otherwise compile torch again in every process, 15 s each.
# For a GPU server pick the pair and the wheel index for your CUDA version, e.g.  make demo TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url <your CUDA index>"
SHELL      := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DATA       ?= data/synthetic
RUN        ?= outputs/demo
# demo-sized synthetic competition (the real one is 2,700 + 1,800 persons)
PERSONS      ?= 300
EVAL_PERSONS ?= 200
SEED         ?= 0
FOLD         ?= 0
FOLDS        ?=
PRESET       ?=
EPOCHS       ?= 12

.PHONY: install data demo eda train pipeline lightweight test test-slow lab clean-nbs export nb-outputs bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(TORCH_SPEC) || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e ".[dev]" || $(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision, timm, mask_pstage; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
	touch $@

data: install
	@if [ -f $(DATA)/train/train.csv ]; then echo "using $(DATA)"; else \
	  $(BIN)/python -m mask_pstage.synth --out $(DATA) --persons $(PERSONS) --eval-persons $(EVAL_PERSONS) --seed $(SEED); fi

eda: data
	mkdir -p $(RUN)
	$(BIN)/papermill nbs/01_eda.ipynb $(RUN)/01_eda.ipynb -p data_dir $(DATA) -p out_dir $(RUN)/eda --log-level WARNING --engine mask_pstage

# one training fold on the demo data (from scratch: nothing is downloaded); re-running resumes or reuses it
train: data
	mkdir -p $(RUN)
	$(BIN)/papermill nbs/03_train.ipynb $(RUN)/03_train_fold$(FOLD).ipynb -p data_dir $(DATA) -p out_dir $(RUN)/train/fold$(FOLD) \
	  -p fold $(FOLD) -p pretrained false -p epochs $(EPOCHS) -p resume true --log-level WARNING --engine mask_pstage

# the whole pipeline (EDA, face crops, K folds, error analysis, ensemble, submission, score) on the demo data, with the
# scratch preset's recipe (from scratch: the cartoon faces gain nothing from ImageNet, and it stays fast) for DEMO_EPOCHS
# epochs (the demo set's 300 persons give 26 updates an epoch, too few for the preset's 12 epochs) and without person
# pooling (the cartoon persons are not told apart by image cues: grouping purity 0.53, and pooling lowered eval from 0.365
# to 0.259); FOLDS=5 TRAIN_FOLDS=5, DEMO_PRESET=cpu (pretrained) or TRAIN="--train lr=0.05" override it
DEMO_EPOCHS ?= 30
DEMO_PRESET ?= scratch
demo: data
	$(BIN)/python -m mask_pstage.pipeline --data $(DATA) --run $(RUN) --preset $(DEMO_PRESET) --train epochs=$(DEMO_EPOCHS) $(if $(FOLDS),--folds $(FOLDS)) \
	  $(if $(TRAIN_FOLDS),--train-folds $(TRAIN_FOLDS)) --ensemble person_pooling=none $(TRAIN)

# the same pipeline on real data, e.g. make pipeline DATA=data/competition RUN=outputs/exp1 PRESET=cpu
# (PRESET=cpu|scratch|gpu picks a recipe; TRAIN="--train model=resnet18", FOLDS=5 and TRAIN_FOLDS=2 (train 2 of the folds) override it)
pipeline: install
	$(BIN)/python -m mask_pstage.pipeline --data $(DATA) --run $(RUN) $(if $(FOLDS),--folds $(FOLDS)) $(if $(TRAIN_FOLDS),--train-folds $(TRAIN_FOLDS)) \
	  $(if $(PRESET),--preset $(PRESET)) $(TRAIN)

# the lightweight-model job notebook on the demo data: accounting, score, distillation, pruning, input sizes
lightweight: data
	mkdir -p outputs/lightweight
	$(BIN)/papermill nbs/06_lightweight.ipynb outputs/lightweight/06_lightweight.ipynb -p data_dir $(DATA) -p out_dir outputs/lightweight --log-level WARNING --engine mask_pstage

# lint (ruff over the notebooks, tests and benchmarks), then the test suite
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -v -p no:cacheprovider -m "not slow" --durations=10

# the second tier: kill-and-resume, torchrun, Optuna workers, every pipeline option, the browser (CI runs both tiers)
test-slow: install
	$(BIN)/python -m pytest tests -v -p no:cacheprovider -m slow --durations=10

# JupyterLab on nbs/ with this environment as the named kernel "Python (mask_pstage)"; LAB_ARGS="--port 8890" etc.
LAB_ARGS ?=
lab: install
	$(BIN)/python -m ipykernel install --sys-prefix --name mask-pstage --display-name "Python (mask_pstage)"
	$(BIN)/jupyter lab --notebook-dir nbs --MappingKernelManager.default_kernel_name=mask-pstage $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# developer helpers: export the package from the notebooks, and clean the notebooks
export: install
	$(BIN)/nbdev-export
clean-nbs: install
	$(BIN)/nbdev-clean
# library notebooks saved with their small outputs (documentation; nbs/12a_nbdev_tools.ipynb), one at a time as the
# tests run them; job notebooks stay clean. NB="nbs/00b_synth.ipynb" saves only the ones named.
nb-outputs: install
	$(BIN)/python -m mask_pstage.nbdev_tools $(NB)

# speed benchmarks of the data paths, the training step and face detection (print images/s); run them alone
bench: install
	$(BIN)/python bench/loader_speed.py
	$(BIN)/python bench/face_detection.py
