# Newcomer entry points: `make demo` (set up + plan/compile/run ResNet-18 on the
# emulated 3-board cluster) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench golden toolchain-rknn arm64-rootfs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,npu]"
	touch $(STAMP)

# setup: the venv (pip: edgeplan + ziglang, the aarch64 linker), then the optional tiers' system tools
# (qemu-user, debootstrap, sshd, iproute2) when root; without root it prints the exact command instead.
setup: $(STAMP)
	@sh scripts/setup-system-tools.sh

demo: setup
	$(BIN)/python -m edgeplan.demo

lint: setup
	$(BIN)/ruff check edgeplan tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks

golden: setup
	$(BIN)/python -m pytest -q tests --update-golden

toolchain-rknn: setup  # RKNN converter + simulator in its own venv (the npu tier)
	$(BIN)/edgeplan toolchain install rknn

arm64-rootfs: setup  # arm64 root fs for the qemu tier (root; the qemu tests also build it when missing)
	$(BIN)/python -m edgeplan.targets.qemu

clean:
	rm -rf $(VENV) build *.egg-info demo-out
