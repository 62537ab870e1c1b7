# The two commands of the README: `make up` deploys the local single-host stack,
# `make test` runs every test. Both set up what they need first (scripts/bootstrap).
VENV ?= .venv
# Extra arguments for `aie up`, e.g. AIE_ARGS="-e aie_mlflow_backend=postgresql".
AIE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: up down status test unit lint bootstrap bootstrap-test benchmark benchmark-s3 benchmark-speed benchmark-cold benchmark-load benchmark-proxy

# What deploying needs (make up); the tests add their tools (bootstrap-test).
bootstrap:
	VENV=$(VENV) scripts/bootstrap deploy

bootstrap-test:
	VENV=$(VENV) scripts/bootstrap test

up: bootstrap
	$(VENV)/bin/aie up $(AIE_ARGS)

down: bootstrap
	$(VENV)/bin/aie down

status: bootstrap
	$(VENV)/bin/aie status

# Two workers (pytest-xdist): the independent deployments (the end-to-end stack, PostgreSQL's, the
# upgrade drill's, Molecule's test hosts) run side by side, each module in one worker
# (tests/conftest.py groups them; image builds take turns).
test: bootstrap-test
	$(VENV)/bin/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

# The fast tests, on every core: no Docker engine needed (addresses, validation, CLI, platforms,
# SFTP store). The static checks are `make lint`.
unit: bootstrap-test
	$(VENV)/bin/python -m pytest -m "not docker and not slow and not lint" -n auto $(PYTEST_ARGS)

lint: bootstrap-test
	$(VENV)/bin/python -m pytest tests/test_lint.py

benchmark: bootstrap-test
	$(VENV)/bin/python benchmarks/sftp_throughput.py

# Multipart integrity and MLflow-vs-boto3 upload speed against the deployed local stack's S3 server.
benchmark-s3: bootstrap-test
	$(VENV)/bin/python benchmarks/s3_integrity.py

# Concurrent MLflow clients against the deployed local stack: calls/s, p50, p95 and errors.
benchmark-load: bootstrap-test
	$(VENV)/bin/python benchmarks/mlflow_load.py

# Upload speed through MLflow's artifact proxy against SFTP and S3 directly, on the local stack (make up).
benchmark-proxy: bootstrap-test
	$(VENV)/bin/python benchmarks/artifact_proxy.py

# Wall time of a no-op `aie up`, `aie status`, `aie serve` and `aie predict` on the deployed local stack.
benchmark-speed: bootstrap-test
	$(VENV)/bin/python benchmarks/speed.py --serve

# Wall time of `make up` on a fresh machine (a Debian container with its own Docker engine, packages
# from the network): about 15 minutes and 10 GB of downloads and images, removed afterwards.
benchmark-cold: bootstrap-test
	$(VENV)/bin/python benchmarks/cold_up.py
