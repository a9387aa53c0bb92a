# tracecap: the two commands that matter are `make run` and `make test` (both set up first).
.PHONY: setup run test unit bench lint clean

setup:
	@sh scripts/setup.sh

run: setup
	tracecap run --config conf/tracecap.conf

test: setup
	/opt/tracecap/venv/bin/python -m pytest -ra tests

unit:
	/opt/tracecap/venv/bin/python -m pytest -q tests/unit

bench: setup
	/opt/tracecap/venv/bin/python scripts/bench.py
	/opt/tracecap/venv/bin/python scripts/bench_net_exec.py
	/opt/tracecap/venv/bin/python scripts/bench_state.py

lint:
	/opt/tracecap/venv/bin/ruff check . && /opt/tracecap/venv/bin/ruff format --check .

clean:
	$(MAKE) -C bpf clean
