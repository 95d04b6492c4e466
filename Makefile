.PHONY: demo test lab bench lint

demo:  ## set up from nothing and run the quickstart notebook on the embedded model
	scripts/demo.sh

test:  ## set up from nothing, then ruff, mypy and the whole test suite
	scripts/test.sh

lab:   ## open JupyterLab on the quickstart notebook (LAB_ARGS go to `jupyter lab`)
	scripts/lab.sh $(LAB_ARGS)

bench: ## run the benchmarks and write bench/results.md
	scripts/setup.sh notebook,local,test
	.venv/bin/python bench/run_all.py

lint:
	.venv/bin/ruff check agentrt_jupyter tests bench
	.venv/bin/mypy
