# The two commands of the README. Both (re)use .venv/, created by tools/setup_env.sh.
.PHONY: setup run test lint format

setup:
	@bash tools/setup_env.sh

run: setup
	.venv/bin/diffdass run

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .
