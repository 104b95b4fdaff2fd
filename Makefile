# fabric-inspect: every target is a thin call of scripts/ or of the two command-line tools.
# `make help` lists the targets and their variables.

CARGO  ?= cargo
PYTHON ?= python3
BIN    := $(or $(CARGO_TARGET_DIR),target)/release
FI     := $(BIN)/fabric-inspect
FT     := $(BIN)/fabric-train

# Paths and options (override on the command line: make train CONFIG=... RUN=...).
CONFIG    ?= configs/fabric00-lite0.yaml
RUN       ?= runs/default
MODEL     ?= onnx/default
UNTRAINED ?=
INPUT     ?=
OUT       ?= inspect-out
DATA      ?=
DEVICE    ?= cpu
ARGS      ?=

# Real test images: FABRIC_DATA, else ../shared/data when that folder exists.
FABRIC_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export XDG_CACHE_HOME ?= $(CURDIR)/target/xdg-cache
export PYTHON

.PHONY: help setup fetch weights build train export inspect eval bench test demo fmt lint ci

help:
	@echo "make demo                synthetic fabric -> train -> export -> inspect a frame (runs setup)"
	@echo "make test                the full test suite (runs setup; FABRIC_DATA=$(FABRIC_DATA))"
	@echo "make setup               fetch ONNX Runtime and teacher weights into third_party/, build"
	@echo "make weights             fetch the teacher weights only"
	@echo "make train   CONFIG=configs/X.yaml RUN=runs/X"
	@echo "make export  RUN=runs/X MODEL=onnx/X     (or UNTRAINED=resnet34 MODEL=onnx/r34-untrained)"
	@echo "make inspect MODEL=onnx/X INPUT='a.png dir/' OUT=inspect-out [DEVICE=cpu|cuda|tensorrt]"
	@echo "make eval    MODEL=onnx/X DATA=path/to/category"
	@echo "make bench   MODEL=onnx/X [DEVICE=...]"
	@echo "make demo    DATA=path/to/category       (the demo on your own images)"
	@echo "make fmt | make lint"
	@echo "Extra flags for the tool of a target: ARGS='...'"

setup:
	scripts/setup.sh all

fetch:
	scripts/setup.sh fetch

weights:
	scripts/setup.sh weights

build:
	$(CARGO) build --release --workspace

train: setup
	$(FT) train --config $(CONFIG) --out $(RUN) $(ARGS)

export: setup
ifneq ($(strip $(UNTRAINED)),)
	$(FT) export --untrained --backbone $(UNTRAINED) --out $(MODEL) $(ARGS)
else
	$(FT) export --checkpoint $(RUN) --out $(MODEL) $(ARGS)
endif

inspect: setup
	@test -n "$(INPUT)" || { echo "make inspect: set INPUT to image files or folders" >&2; exit 2; }
	mkdir -p $(OUT)
	$(FI) inspect --model $(MODEL) $(INPUT) --out $(OUT) --json $(OUT)/report.jsonl --device $(DEVICE) $(ARGS)

eval: setup
	@test -n "$(DATA)" || { echo "make eval: set DATA to an MVTec-layout category folder" >&2; exit 2; }
	$(FI) eval --model $(MODEL) --data $(DATA) $(ARGS)

bench: setup
	$(FI) bench --model $(MODEL) --device $(DEVICE) $(ARGS)

test: setup
	XDG_CACHE_HOME=$(CURDIR)/target/xdg-cache $(if $(FABRIC_DATA),FABRIC_DATA=$(abspath $(FABRIC_DATA)),) \
		$(CARGO) test --release --workspace

demo: setup
	DATA=$(DATA) scripts/demo.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

ci:
	.ci/run
