# tracecap: the two commands that matter are `make run` and `make test` (both set up first).
.PHONY: setup setup-test setup-kernels run test test-kernels bench-kernels unit bench lint clean

setup:
	@sh scripts/setup.sh

# what only the tests and the benchmarks need (real programs to capture, pcap readers)
setup-test: setup
	@sh scripts/setup-test.sh

# the installed copy the kernel matrix runs (scripts/setup.sh honours TRACECAP_PREFIX too)
PREFIX = $(or $(TRACECAP_PREFIX),/opt/tracecap)

# the kernel matrix (.ci/run runs a subset after `make test`): QEMU, virtme-ng and Debian's
# kernels, unpacked; `make test-kernels KERNELS="host 6.1"` runs those rows only, and
# TRACECAP_SMOKE_KINDS=module (comma-separated) only those capture kinds in each
setup-kernels: setup-test
	@sh scripts/setup-kernels.sh

test-kernels: setup-kernels
	$(PREFIX)/venv/bin/python scripts/test_kernels.py $(KERNELS)

# not in CI: the write capture's hooks (fentry, syscall tracepoints) in the 6.1 guest, their
# artifacts and what they cost processes out of scope (KERNEL=6.12 for another)
bench-kernels: setup-kernels
	/opt/tracecap/venv/bin/python scripts/bench_kernels.py $(KERNEL)

run: setup
	tracecap run --config conf/tracecap.conf

test: setup-test
	/opt/tracecap/venv/bin/python -m pytest -ra --durations=25 tests

unit:
	/opt/tracecap/venv/bin/python -m pytest -q tests/unit

bench: setup-test
	/opt/tracecap/venv/bin/python scripts/bench.py
	/opt/tracecap/venv/bin/python scripts/bench_workloads.py
	/opt/tracecap/venv/bin/python scripts/bench_net_exec.py
	/opt/tracecap/venv/bin/python scripts/bench_state.py
	/opt/tracecap/venv/bin/python scripts/bench_protocols.py
	/opt/tracecap/venv/bin/python scripts/bench_mem.py
	/opt/tracecap/venv/bin/python scripts/bench_procs.py
	/opt/tracecap/venv/bin/python scripts/bench_ship.py
	/opt/tracecap/venv/bin/python scripts/bench_fleet.py
	/opt/tracecap/venv/bin/python scripts/bench_report.py

lint:
	/opt/tracecap/venv/bin/ruff check . && /opt/tracecap/venv/bin/ruff format --check .

clean:
	$(MAKE) -C bpf clean
