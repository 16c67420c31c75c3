# The two commands a newcomer needs:  `make demo`  and  `make test`.
PY := .venv/bin/python

.PHONY: setup demo test test-all bench hub

setup:            ## create .venv with every dependency (seconds when already done)
	bash scripts/setup.sh

demo: setup       ## fetch the model, adapt to a headroom-suite task, serve it, compare accuracies with CIs
	$(PY) -m lorahub_serve.demo

test: setup       ## the default suite (fast tests + real vLLM/Ray/Triton-interpreter tests)
	$(PY) -m pytest -q

test-all: setup   ## everything, including slow tests that need the 135M model
	$(PY) -m pytest -q -m "not gpu"

hub: setup        ## build (or resume) the default hub for SmolLM2-135M
	bash scripts/build_default_hub.sh
