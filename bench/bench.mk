# Benchmarks (docs/PERFORMANCE.md). Included by the root Makefile: `include bench/bench.mk`.
# Not part of `make test`. Both targets install nginx/wrk when missing, build $(BUILD)/kzhook,
# then run bench/run.py, which prints a table and writes bench/results/<date>-<sha>.json.
#   make bench-quick     ~1.5 min: 10k-event e2e, 5 s latency steps, 100k backlog
#   make bench           ~15-25 min: 100k e2e, 20 s latency steps, 1M backlog; refreshes the
#                        results block of docs/PERFORMANCE.md
#   make bench-pg-quick  PostgreSQL mode, 1 and 2 nodes on a private server: 3 s ingest, 10k e2e
#   make bench-pg        the same with 15 s ingest and 100k e2e; refreshes the pg-results block
# (scripts/bootstrap.sh bench also installs postgresql: the PostgreSQL mode needs its server.)
# Extra driver flags: make bench BENCH_ARGS="--only latency --rates 200,2000"
BENCH_ARGS ?=

.PHONY: bench bench-quick bench-pg bench-pg-quick

bench:
	@scripts/bootstrap.sh bench
	$(MAKE) --no-print-directory $(BUILD)/kzhook
	python3 bench/run.py --binary $(BUILD)/kzhook --update-docs $(BENCH_ARGS)

bench-quick:
	@scripts/bootstrap.sh bench
	$(MAKE) --no-print-directory $(BUILD)/kzhook
	python3 bench/run.py --binary $(BUILD)/kzhook --quick $(BENCH_ARGS)

bench-pg:
	@scripts/bootstrap.sh bench
	$(MAKE) --no-print-directory $(BUILD)/kzhook
	python3 bench/run.py --binary $(BUILD)/kzhook --pg --update-docs $(BENCH_ARGS)

bench-pg-quick:
	@scripts/bootstrap.sh bench
	$(MAKE) --no-print-directory $(BUILD)/kzhook
	python3 bench/run.py --binary $(BUILD)/kzhook --pg --quick $(BENCH_ARGS)
