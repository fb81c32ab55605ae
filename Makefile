# Two commands do everything on a fresh machine (Python 3.11): `make sample` and `make test`.
# Each installs what is missing into .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
OUT ?= $(CURDIR)/output/$(shell date +%Y%m%d-%H%M%S)
SAMPLES ?= 2
SEED ?= 0
STEPS ?= 25

.PHONY: sample test lint demo-weights rflow-demo

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install -r requirements.txt
	touch $@

## Sample synthetic CTs with the shipped demo weights (or yours, once models/ holds them).
sample: $(VENV)/.installed
	cd bundle && $(PY) -m monai.bundle run --config_file configs/inference.json \
		--num_samples $(SAMPLES) --seed $(SEED) --num_inference_steps $(STEPS) --output_dir $(OUT)
	@echo "Synthetic CTs (NIfTI, HU) and previews (PNG) are in $(OUT)"

## Run the tests.
test: $(VENV)/.installed
	$(PY) -m pytest

## Check formatting and lint (ruff, settings in pyproject.toml); `ruff format .` and `ruff check --fix .` mend most findings.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

## Rebuild the shipped demo weights in bundle/models/demo from phantoms (about 3.5 hours on a 2-core CPU):
## autoencoder, then its decoder fine-tuned to draw tumors; diffusion; ControlNet, then two tumor-weighted
## fine-tunes (learning rate 5e-4, then 1e-4 to settle).
## Each stage trains in a folder of bundle/runs/ (resumable: run it again after an interruption).
DEMO_RUN = cd bundle && $(PY) -m monai.bundle run
demo-weights: $(VENV)/.installed
	cd bundle && $(PY) -m scripts phantoms --out data/phantoms --n 48 --size 128 --seed 0
	$(DEMO_RUN) --config_file "['configs/train_autoencoder.json','configs/demo.json']" --ckpt_dir runs/demo --log_dir runs/demo/autoencoder
	$(DEMO_RUN) --config_file "['configs/train_autoencoder.json','configs/demo.json','configs/finetune_decoder.json']" --ckpt_dir runs/demo \
		--log_dir runs/demo/autoencoder_finetuned
	$(DEMO_RUN) --config_file "['configs/train_diffusion.json','configs/demo.json']" --ckpt_dir runs/demo --log_dir runs/demo/diffusion \
		--batch_size 8 --max_epochs 300 --val_interval 25
	$(DEMO_RUN) --config_file "['configs/train_controlnet.json','configs/demo.json']" --ckpt_dir runs/demo --log_dir runs/demo/controlnet \
		--batch_size 8 --max_epochs 160 --val_interval 25
	$(DEMO_RUN) --config_file "['configs/train_controlnet.json','configs/demo.json']" --ckpt_dir runs/demo_controlnet_ft \
		--autoencoder_path runs/demo/autoencoder.pt --diffusion_path runs/demo/diffusion.pt --controlnet_init_path runs/demo/controlnet.pt \
		--learning_rate 0.0005 --tumor_loss_weight 20.0 --batch_size 8 --max_epochs 30 --val_interval 25 --log_dir runs/demo_controlnet_ft/log
	$(DEMO_RUN) --config_file "['configs/train_controlnet.json','configs/demo.json']" --ckpt_dir runs/demo_controlnet_ft2 \
		--autoencoder_path runs/demo/autoencoder.pt --diffusion_path runs/demo/diffusion.pt --controlnet_init_path runs/demo_controlnet_ft/controlnet.pt \
		--learning_rate 0.0001 --tumor_loss_weight 20.0 --batch_size 8 --max_epochs 10 --val_interval 5 --log_dir runs/demo_controlnet_ft2/log
	cp bundle/runs/demo/autoencoder_finetuned.pt bundle/models/demo/autoencoder.pt
	cp bundle/runs/demo/diffusion.pt bundle/runs/demo_controlnet_ft2/controlnet.pt bundle/models/demo/

## A rectified-flow U-Net on the shipped demo autoencoder, for the benchmark's RFlow rows (not shipped):
## bundle/runs/demo_rflow/diffusion.pt (100 epochs: about 11 minutes on a 2-core CPU, 75 s on an H200).
rflow-demo: $(VENV)/.installed
	test -f bundle/data/phantoms/datalist.json || (cd bundle && $(PY) -m scripts phantoms --out data/phantoms --n 48 --size 128 --seed 0)
	$(DEMO_RUN) --config_file "['configs/train_diffusion.json','configs/demo.json','configs/rflow.json']" --ckpt_dir runs/demo_rflow \
		--autoencoder_path models/demo/autoencoder.pt --log_dir runs/demo_rflow/log --batch_size 8 --max_epochs 100 --val_interval 25
