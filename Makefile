# Two commands do everything on a fresh machine (Python 3.11): `make sample` and `make test`.
# Each installs what is missing into .venv first.

PYTHON ?= python3
VENV := .venv
LOCK_VENV := .venv-lock
PY := $(CURDIR)/$(VENV)/bin/python
OUT ?= $(CURDIR)/output/$(shell date +%Y%m%d-%H%M%S)
SAMPLES ?= 2
SEED ?= 0
# Reverse steps of `make sample`; empty: the default of the model's sampler (DDIM 25, RFlow 10).
STEPS ?=

.PHONY: sample test lint lock train demo-weights ddpm-demo

# requirements.txt names the stack; requirements.lock pins every package of it, so two machines get the same.
$(VENV)/.installed: requirements.txt requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -c requirements.lock pip setuptools
	$(VENV)/bin/pip install -r requirements.txt -c requirements.lock
	touch $@

## Refresh requirements.lock after changing requirements.txt: a fresh install of it, checked and frozen.
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet -r requirements.txt
	$(LOCK_VENV)/bin/pip check
	{ echo "# Every package of a fresh install of requirements.txt (Python 3.11, x86_64); refresh with make lock."; \
		$(LOCK_VENV)/bin/pip freeze --all; } > requirements.lock
	rm -rf $(LOCK_VENV)

## Sample synthetic CTs with the shipped demo weights (or yours, once models/ holds them).
sample: $(VENV)/.installed
	cd bundle && $(PY) -m monai.bundle run --config_file configs/inference.json \
		--num_samples $(SAMPLES) --seed $(SEED) $(if $(STEPS),--num_inference_steps $(STEPS)) --output_dir $(OUT)
	@echo "Synthetic CTs (NIfTI, HU) and previews (PNG) are in $(OUT)"

## Run the tests. The DICOM validator tests need dicom3tools (dciodvfy, dcentvfy): installed with apt when missing and
## root, otherwise those tests skip.
test: $(VENV)/.installed
	@command -v dciodvfy >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dicom3tools; } \
		|| echo "dicom3tools is missing and apt-get (as root) could not install it: the DICOM validator tests will skip"
	$(PY) -m pytest

## Check formatting and lint (ruff, settings in pyproject.toml); `ruff format .` and `ruff check --fix .` mend most findings.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

## Train every stage in order on DATA (a folder with datalist.json, from `ingest` or `phantoms`): the autoencoder,
## its decoder fine-tuned to draw tumors, the diffusion U-Net, the tumor ControlNet, the structure segmenter (on DATA
## and the autoencoder's reconstructions of it, in $(RUNS)/reconstructions, so it labels decoded CTs too). CONFIG names
## overlays of configs/ (CONFIG=highres for 512 x 512 x 128; CONFIG=demo; none: the thesis configuration); <STAGE>_ARGS add
## overrides per stage. Each stage resumes after an interruption and is skipped once its final weights exist;
## the weights to sample with are gathered in $(RUNS)/model.
comma := ,
empty :=
space := $(empty) $(empty)
DATA ?= $(CURDIR)/bundle/data
CONFIG ?=
RUNS ?= $(CURDIR)/bundle/runs/$(or $(subst $(space),-,$(strip $(CONFIG))),thesis)
configs = "[$(subst $(space),$(comma),$(foreach c,$(1) $(CONFIG) $(2),'configs/$(c).json'))]"
BUNDLE_RUN = cd bundle && $(PY) -m monai.bundle run
STAGE = $(BUNDLE_RUN) --dataset_dir $(DATA) --ckpt_dir $(RUNS)
train: $(VENV)/.installed
	test -f $(RUNS)/autoencoder.pt || ($(STAGE) --config_file $(call configs,train_autoencoder) \
		--log_dir $(RUNS)/log/autoencoder $(AUTOENCODER_ARGS))
	test -f $(RUNS)/autoencoder_finetuned.pt || ($(STAGE) --config_file $(call configs,train_autoencoder,finetune_decoder) \
		--log_dir $(RUNS)/log/autoencoder_finetuned $(FINETUNE_ARGS))
	test -f $(RUNS)/diffusion.pt || ($(STAGE) --config_file $(call configs,train_diffusion) \
		--log_dir $(RUNS)/log/diffusion $(DIFFUSION_ARGS))
	test -f $(RUNS)/controlnet.pt || ($(STAGE) --config_file $(call configs,train_controlnet) \
		--log_dir $(RUNS)/log/controlnet $(CONTROLNET_ARGS))
	test -f $(RUNS)/segmentation.pt || (cd bundle && $(PY) -m scripts reconstructions --data $(DATA) \
		--autoencoder $(RUNS)/autoencoder_finetuned.pt --out $(RUNS)/reconstructions)
	test -f $(RUNS)/segmentation.pt || ($(BUNDLE_RUN) --dataset_dir $(RUNS)/reconstructions --ckpt_dir $(RUNS) \
		--config_file $(call configs,train_segmentation) --log_dir $(RUNS)/log/segmentation $(SEGMENTATION_ARGS))
	mkdir -p $(RUNS)/model
	cp $(RUNS)/autoencoder_finetuned.pt $(RUNS)/model/autoencoder.pt
	cp $(RUNS)/diffusion.pt $(RUNS)/controlnet.pt $(RUNS)/segmentation.pt $(RUNS)/model/
	@echo "Trained weights are in $(RUNS)/model: sample with --model_dir $(RUNS)/model"

## Train the 128^3 demo weights from 48 phantoms with `make train CONFIG="demo rflow"` (a rectified-flow U-Net; about
## 1 h 40 min on a 2-core CPU; resumable: run it again after an interruption) and copy them to bundle/models/demo.
## The structure segmenter trains on a 64^3 grid, on the phantoms and their reconstructions (about 1.5 h more), and
## labels CTs of any grid over the same box.
DEMO_DATA = $(CURDIR)/bundle/data/phantoms
demo-weights: $(VENV)/.installed
	test -f $(DEMO_DATA)/datalist.json || (cd bundle && $(PY) -m scripts phantoms --out $(DEMO_DATA) --n 48 --size 128 --seed 0)
	$(MAKE) train DATA=$(DEMO_DATA) CONFIG="demo rflow" RUNS=$(CURDIR)/bundle/runs/demo \
		AUTOENCODER_ARGS="--max_epochs 60 --val_interval 10" \
		DIFFUSION_ARGS="--batch_size 8 --max_epochs 200 --val_interval 25" \
		CONTROLNET_ARGS="--batch_size 8 --max_epochs 200 --val_interval 25 --tumor_loss_weight 20.0" \
		SEGMENTATION_ARGS="--grid_size 64 --max_epochs 100 --val_interval 10"
	cp bundle/runs/demo/model/*.pt bundle/models/demo/

## A DDPM U-Net on the shipped demo autoencoder, for the benchmark's DDPM and DDIM rows (not shipped):
## bundle/runs/demo_ddpm/diffusion.pt (200 epochs: about 9 minutes on a 2-core CPU).
ddpm-demo: $(VENV)/.installed
	test -f bundle/data/phantoms/datalist.json || (cd bundle && $(PY) -m scripts phantoms --out data/phantoms --n 48 --size 128 --seed 0)
	$(BUNDLE_RUN) --config_file "['configs/train_diffusion.json','configs/demo.json']" --ckpt_dir runs/demo_ddpm \
		--autoencoder_path models/demo/autoencoder.pt --log_dir runs/demo_ddpm/log --batch_size 8 --max_epochs 200 --val_interval 25
