# kzhook — one root Makefile (docs/STYLE.md rule 15). `make` builds build/kzhook.
PKGS      := libmicrohttpd libcurl sqlite3 jansson openssl libpq
BUILD     ?= build
CC        ?= cc
OPT       ?= -O2 -g
SAN       ?=
WARN      := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla -Werror
CFLAGS    += -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE $(OPT) $(SAN) $(WARN) -MMD -MP \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -pthread
LDLIBS    += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread -lm
LDFLAGS   += $(SAN)

SRCS      := $(wildcard src/*.c)
LIBSRCS   := $(filter-out src/main.c,$(SRCS))
OBJS      := $(SRCS:src/%.c=$(BUILD)/obj/%.o)
LIBOBJS   := $(LIBSRCS:src/%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/openapi_json.o \
             $(BUILD)/obj/gen/ui_assets.o
UNITSRCS  := $(wildcard tests/unit/test_*.c)
UNITBINS  := $(UNITSRCS:tests/unit/%.c=$(BUILD)/unit/%)

.PHONY: all run test check unit integration asan valgrind valgrind-quick crash-test lint format format-check clean deps test-deps

all: deps $(BUILD)/kzhook

deps:
	@scripts/bootstrap.sh build

test-deps:
	@scripts/bootstrap.sh test
	@if [ ! -d tests/integration/node/node_modules ] && [ -f tests/integration/node/package-lock.json ]; then \
	    cd tests/integration/node && npm ci --no-audit --no-fund --loglevel=error; fi
	@if [ ! -d tests/integration/console/node_modules ]; then \
	    cd tests/integration/console && npm ci --no-audit --no-fund --loglevel=error; fi

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) -c $< -o $@

# docs/openapi.json embedded into the binary (src/openapi.h): a C array written with od and sed,
# both in coreutils/sed, so a machine with only the build dependencies can make it.
$(BUILD)/gen/openapi_json.c: docs/openapi.json
	@mkdir -p $(dir $@)
	@echo "GEN $@"
	@{ echo '/* Generated from docs/openapi.json by the Makefile: do not edit. */'; \
	   echo '#include "openapi.h"'; \
	   echo 'const unsigned char kz_openapi_json[] = {'; \
	   od -An -v -tx1 $< | sed 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	   echo '0x00};'; \
	   echo 'const size_t kz_openapi_json_len = sizeof(kz_openapi_json) - 1;'; } > $@.tmp
	@mv $@.tmp $@

$(BUILD)/obj/gen/openapi_json.o: $(BUILD)/gen/openapi_json.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) -Isrc -c $< -o $@

# The console (src/ui.h): ui/*.html, *.css, *.js and uPlot's dist files (from ui/node_modules,
# installed by npm from ui/package-lock.json) embedded as C arrays written with od and sed, each
# with its cksum as ETag. Nothing is read from disk or fetched at run time.
UI_FILES  := $(sort $(wildcard ui/*.html ui/*.css ui/*.js))
UI_VENDOR := ui/node_modules/uplot/dist/uPlot.esm.js ui/node_modules/uplot/dist/uPlot.min.css

ui/node_modules/.kzhook-npm: ui/package-lock.json
	@echo "NPM ui (uplot)"
	@cd ui && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(BUILD)/gen/ui_assets.c: $(UI_FILES) ui/node_modules/.kzhook-npm Makefile
	@mkdir -p $(dir $@)
	@echo "GEN $@"
	@{ echo '/* Generated from ui/ by the Makefile: do not edit. */'; \
	   echo '#include "ui.h"'; \
	   i=0; for f in $(UI_FILES) $(UI_VENDOR); do \
	     echo "static const unsigned char a$$i[] = {"; \
	     od -An -v -tx1 $$f | sed 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	     echo '0x00};'; i=$$((i+1)); done; \
	   echo 'const struct kz_ui_asset kz_ui_assets[] = {'; \
	   i=0; for f in $(UI_FILES) $(UI_VENDOR); do \
	     case $$f in ui/node_modules/*) n=vendor/$${f##*/} ;; *) n=$${f#ui/} ;; esac; \
	     echo "{\"$$n\", a$$i, sizeof(a$$i) - 1, \"\\\"$$(cksum < $$f | cut -d' ' -f1)\\\"\"},"; \
	     i=$$((i+1)); done; \
	   echo '{0, 0, 0, 0}};'; } > $@.tmp
	@mv $@.tmp $@

$(BUILD)/obj/gen/ui_assets.o: $(BUILD)/gen/ui_assets.c src/ui.h
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) -Isrc -c $< -o $@

$(BUILD)/libkz.a: $(LIBOBJS)
	@rm -f $@
	@ar rcs $@ $^

$(BUILD)/kzhook: $(BUILD)/obj/main.o $(BUILD)/libkz.a
	@echo "LD $@"
	@$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/unit/%: tests/unit/%.c $(BUILD)/libkz.a
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) -Isrc $(shell pkg-config --cflags cmocka) -o $@ $< $(BUILD)/libkz.a \
	    $(LDFLAGS) $(LDLIBS) $(shell pkg-config --libs cmocka)

run: all
	@mkdir -p kzhook-data
	$(BUILD)/kzhook serve

# The whole suite, built with clang under ASan+UBSan (CI runs exactly this): first `make lint`
# (banned functions, raw allocation) and `make format-check` (clang-format), then unit tests, the
# black-box integration suite on SQLite and again on a private PostgreSQL server. See
# scripts/run-tests.sh.
# Then the bounded hardening runs: every fuzz target for FUZZ_SECONDS over its corpus and
# regression inputs, a crash test with CRASH_KILLS SIGKILLs (make crash-test does 20), and
# part of the integration suite under valgrind (make valgrind runs all of it).
CRASH_KILLS ?= 10
test: test-deps
	$(MAKE) --no-print-directory lint format-check
	$(MAKE) --no-print-directory check CC=clang BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=all"
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10
	scripts/crash-test.sh build-asan --kills $(CRASH_KILLS) --max-time 150
	$(MAKE) --no-print-directory valgrind-quick

# SIGKILL kzhook 20 times at random moments of a load run; every accepted event must arrive.
crash-test: test-deps
	$(MAKE) --no-print-directory $(BUILD)/kzhook
	scripts/crash-test.sh $(BUILD)

asan: test

# The same suite on the current build flags (gcc, -O2 by default).
check:
	$(MAKE) --no-print-directory $(BUILD)/kzhook $(UNITBINS)
	@scripts/run-tests.sh $(BUILD)

unit: test-deps
	$(MAKE) --no-print-directory $(UNITBINS)
	@scripts/run-unit.sh $(UNITBINS)

integration: test-deps
	$(MAKE) --no-print-directory $(BUILD)/kzhook
	@python3 tests/integration/run.py --binary $(BUILD)/kzhook

# The integration suite with kzhook under valgrind memcheck: zero errors, zero definite leaks.
# valgrind-quick (part of `make test`) runs the bad-input and delivery-engine tests only.
VG_TESTS ?=
valgrind: test-deps
	$(MAKE) --no-print-directory $(BUILD)/kzhook
	KZ_VG_BINARY=$(abspath $(BUILD)/kzhook) python3 tests/integration/run.py \
	    --binary scripts/valgrind-kzhook.sh --timeout-scale 6 --max-time 7200 $(VG_TESTS)

valgrind-quick:
	$(MAKE) --no-print-directory valgrind VG_TESTS="-k test_badinput -k test_delivery.Engine"

FORMAT_FILES = src/*.c src/*.h tests/unit/*.c

lint:
	@scripts/lint.sh

format:
	clang-format -i $(FORMAT_FILES)

# Part of `make test`: fails when a file differs from what `make format` would write.
format-check:
	@clang-format --dry-run --Werror $(FORMAT_FILES) && echo "format: ok"

clean:
	rm -rf build build-asan build-fuzz

-include $(OBJS:.o=.d) $(UNITBINS:%=%.d)

# Benchmarks (not part of `make test`): see docs/PERFORMANCE.md.
-include bench/bench.mk
-include fuzz.mk
