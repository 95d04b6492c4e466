.PHONY: demo test lab bench lint

demo:  ## set up from nothing and run the quickstart notebook on the embedded model
	scripts/demo.sh

test:  ## set up from nothing, then `make lint` and the whole test suite
	scripts/test.sh

lab:   ## open JupyterLab on the quickstart notebook (LAB_ARGS go to `jupyter lab`)
	scripts/lab.sh $(LAB_ARGS)

bench: ## run the benchmarks and write bench/results.md
	scripts/setup.sh notebook,local,mcp,openai,anthropic
	.venv/bin/python bench/run_all.py

lint:  ## ruff (check and format), mypy and eslint, on what `scripts/setup.sh` installed
	@printf '\n\033[1m==> ruff\033[0m\n'
	.venv/bin/ruff check agentrt_jupyter tests bench scripts
	.venv/bin/ruff format --check agentrt_jupyter tests bench scripts
	@printf '\n\033[1m==> mypy\033[0m\n'
	.venv/bin/mypy
	@printf '\n\033[1m==> eslint (labextension/src)\033[0m\n'
	@if command -v npm >/dev/null; then \
	  cd labextension && { [ -d node_modules ] || npm ci --no-audit --no-fund; } \
	    && npm run --silent eslint:check && echo "eslint: clean"; \
	elif [ -n "$$CI" ]; then echo "eslint needs Node.js (npm) in CI" >&2; exit 1; \
	else echo "note: Node.js (npm) not found: eslint skipped"; fi
