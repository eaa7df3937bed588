# The README's two commands: `make demo` and `make test`. Both create .venv and install with pip.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench-wafer bench-wafer-ablation bench-anomaly bench-severity bench-retrieval bench-surrogate bench-reference clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 not found as '$(PYTHON)': set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fabml demo --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest tests

bench-wafer: $(STAMP)
	$(PY) benchmarks/wafer_wm811k.py

# about 13 minutes on 2 CPU cores: the wafer recipe's input size x attention block on WM-811K, measured on val_data
WM := ../shared/data/wm811k
bench-wafer-ablation: $(STAMP)
	$(VENV)/bin/fabml wafer ablation --data $(WM)/train_20_split.pkl.xz,$(WM)/train_10_split.pkl.xz \
		--reference $(WM)/train_10_split.pkl.xz --test $(WM)/val_data.pkl.xz --out runs/wafer_ablation \
		--config configs/wafer_cpu.yaml --set train.epochs=2 --set train.max_minutes=6 --set eval.tta_d4=true \
		--set eval.d4_maps=1000 --grid data.size=32,64 --grid model.attention=false,true
	cp runs/wafer_ablation/ablation.md benchmarks/results/wafer_ablation.md
	cp runs/wafer_ablation/ablation.json benchmarks/results/wafer_ablation.json

# needs anomalib in its own environment: see the docstring of benchmarks/anomaly_magnetic_tile.py
bench-anomaly: $(STAMP)
	$(PY) benchmarks/anomaly_magnetic_tile.py

# about 75 minutes on 2 CPU cores: draem_severity's five input modes, then three fault probabilities (magnetic tile)
bench-severity: $(STAMP)
	$(PY) benchmarks/anomaly_severity.py

# about 35 minutes on 2 CPU cores: GroceryStore and magnetic-tile defect types, frozen / softmax / ArcFace
bench-retrieval: $(STAMP)
	$(PY) benchmarks/retrieval_grocery.py

# about 20 minutes on 2 CPU cores: Darcy 16x16 (CNN / ViT e2e, VAE floor, ridge, kernel ridge), neuraloperator's FNO
# from its own environment (NEURALOP_PYTHON; see benchmarks/fno_darcy_peer.py) and an 8 GB lazy-mode scale check
bench-surrogate: $(STAMP)
	$(PY) benchmarks/surrogate_darcy.py --threads 1

# estimated at about 11 minutes on 2 CPU cores (from smoke runs): reference mode vs PatchCore / PaDiM, 256 x 256 generated boards
bench-reference: $(STAMP)
	$(PY) benchmarks/anomaly_reference.py

clean:
	rm -rf $(VENV) outputs
