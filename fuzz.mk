# fuzz.mk — libFuzzer targets for every parser and validator fed by the network or the operator
# (docs/STYLE.md rule 15c). Included from the root Makefile with `-include fuzz.mk`; see docs/SECURITY.md
# ("Fuzzing") for what each target checks and how to read a crash.
#
#   make fuzz            build, then fuzz each target FUZZ_SECONDS (default 20) over its corpus;
#                        fails if any target crashes, leaks, hits UB or breaks an invariant
#   make fuzz-long       the same for FUZZ_SECONDS=3600 per target, FUZZ_JOBS (2) targets at once
#   make fuzz-regress    run every target once over its corpus and tests/fuzz/regressions/<t>/,
#                        without fuzzing (seconds; suitable for `make test`)
#   make fuzz-run-<t>    fuzz one target, e.g. `make fuzz-run-url FUZZ_SECONDS=600`
#   make fuzz-merge      add the inputs found in $(FUZZ_BUILD)/corpus/<t> that reach new code
#                        to the checked-in corpus tests/fuzz/corpus/<t> (libFuzzer -merge=1)
#
# Everything is built with clang under ASan+UBSan into $(FUZZ_BUILD); new corpus entries and
# crash artifacts stay there too (build-fuzz/corpus/<t>, build-fuzz/artifacts/<t>).

# Whatever includes this file keeps its own default goal (see the end of the file).
FUZZ_SAVED_GOAL := $(.DEFAULT_GOAL)

FUZZ_BUILD   ?= build-fuzz
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 20
FUZZ_JOBS    ?= 2
FUZZ_TIMEOUT ?= 25
FUZZ_FLAGS   ?=
FUZZ_TARGETS := json url dur retry_after config api envelope filter
# Sub-makes re-read the makefile this was included from (the root Makefile, or fuzz.mk itself
# when run as `make -f fuzz.mk ...`).
FUZZ_MAKE    := $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST))

FUZZ_PKGS    := libmicrohttpd libcurl sqlite3 jansson openssl uuid libpq
FUZZ_WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla \
                -Werror
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS  := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -O1 -g \
                -fno-omit-frame-pointer $(FUZZ_WARN) -MMD -MP -pthread \
                $(shell pkg-config --cflags $(FUZZ_PKGS) 2>/dev/null)
# netguard.c replaces connect() and getaddrinfo() for the whole process (libcurl included):
# export them from the executable explicitly rather than rely on the linker's default.
FUZZ_LDLIBS  := $(shell pkg-config --libs $(FUZZ_PKGS) 2>/dev/null) -pthread -lm -ldl \
                -Wl,--export-dynamic-symbol=connect -Wl,--export-dynamic-symbol=getaddrinfo

# FUZZ_SRCDIR lets a proposed fix be fuzzed from a patched copy of src/ without touching src/:
#   make fuzz FUZZ_SRCDIR=/tmp/src-fixed FUZZ_BUILD=build-fuzz-fixed
FUZZ_SRCDIR  ?= src
FUZZ_LIBSRCS := $(filter-out $(FUZZ_SRCDIR)/main.c,$(wildcard $(FUZZ_SRCDIR)/*.c))
FUZZ_LIBOBJS := $(FUZZ_LIBSRCS:$(FUZZ_SRCDIR)/%.c=$(FUZZ_BUILD)/obj/%.o) \
                $(FUZZ_BUILD)/obj/gen/openapi_json.o $(FUZZ_BUILD)/obj/gen/ui_assets.o
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

# Dictionary per target (libFuzzer takes one); api gets the union of json, url and its own.
FUZZ_DICT_json        := tests/fuzz/json.dict
FUZZ_DICT_envelope    := tests/fuzz/json.dict
FUZZ_DICT_url         := tests/fuzz/url.dict
FUZZ_DICT_config      := tests/fuzz/config.dict
FUZZ_DICT_dur         := tests/fuzz/config.dict
FUZZ_DICT_retry_after := tests/fuzz/retry_after.dict
FUZZ_DICT_filter      := tests/fuzz/filter.dict
FUZZ_DICT_api         := $(FUZZ_BUILD)/api.dict

.PHONY: fuzz fuzz-long fuzz-regress fuzz-merge fuzz-build fuzz-deps $(FUZZ_TARGETS:%=fuzz-run-%)

fuzz-deps:
	@scripts/bootstrap.sh fuzz

fuzz-build: fuzz-deps
	+@$(FUZZ_MAKE) $(FUZZ_BINS) $(FUZZ_BUILD)/api.dict

$(FUZZ_BUILD)/obj/%.o: $(FUZZ_SRCDIR)/%.c
	@mkdir -p $(dir $@)
	@echo "CC (fuzz) $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(FUZZ_SAN) -c $< -o $@

# docs/openapi.json, embedded as in the root Makefile (src/openapi.h)
$(FUZZ_BUILD)/obj/gen/openapi_json.o: docs/openapi.json
	@mkdir -p $(dir $@)
	@{ echo '#include "openapi.h"'; echo 'const unsigned char kz_openapi_json[] = {'; \
	   od -An -v -tx1 $< | sed 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '0x00};'; \
	   echo 'const size_t kz_openapi_json_len = sizeof(kz_openapi_json) - 1;'; } > $@.c
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -I$(FUZZ_SRCDIR) -c $@.c -o $@

# the console's files, from the C file the root Makefile generates (src/ui.h)
$(FUZZ_BUILD)/obj/gen/ui_assets.o: $(BUILD)/gen/ui_assets.c
	@mkdir -p $(dir $@)
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -I$(FUZZ_SRCDIR) -c $< -o $@

$(FUZZ_BUILD)/libkz-fuzz.a: $(FUZZ_LIBOBJS)
	@rm -f $@
	@ar rcs $@ $^

$(FUZZ_BUILD)/harness/%.o: tests/fuzz/%.c
	@mkdir -p $(dir $@)
	@echo "CC (fuzz) $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -I$(FUZZ_SRCDIR) -fsanitize=fuzzer-no-link $(FUZZ_SAN) -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/harness/fuzz_%.o $(FUZZ_BUILD)/harness/netguard.o \
                      $(FUZZ_BUILD)/libkz-fuzz.a
	@echo "LD $@"
	@$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LDLIBS)

# Keep the harness objects: make would delete them as intermediates of the chain above.
.SECONDARY: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/harness/fuzz_%.o) $(FUZZ_BUILD)/harness/netguard.o

$(FUZZ_BUILD)/api.dict: tests/fuzz/json.dict tests/fuzz/url.dict tests/fuzz/api.dict
	@mkdir -p $(dir $@)
	@cat $^ > $@

# One target for FUZZ_SECONDS. New inputs go to $(FUZZ_BUILD)/corpus/<t>; the checked-in seeds
# and regressions are read, never written. The summary (execs, execs/s, corpus) is printed from
# libFuzzer's final stats; the whole log stays in $(FUZZ_BUILD)/logs/<t>.log.
$(FUZZ_TARGETS:%=fuzz-run-%): fuzz-run-%: $(FUZZ_BUILD)/fuzz_% $(FUZZ_BUILD)/api.dict
	@mkdir -p $(FUZZ_BUILD)/corpus/$* $(FUZZ_BUILD)/artifacts/$* $(FUZZ_BUILD)/logs \
	    tests/fuzz/corpus/$* tests/fuzz/regressions/$*
	@echo "fuzz: $* for $(FUZZ_SECONDS)s"
	@rc=0; $(FUZZ_BUILD)/fuzz_$* -max_total_time=$(FUZZ_SECONDS) -timeout=$(FUZZ_TIMEOUT) \
	    -rss_limit_mb=4096 -print_final_stats=1 -dict=$(FUZZ_DICT_$*) \
	    -artifact_prefix=$(FUZZ_BUILD)/artifacts/$*/ $(FUZZ_FLAGS) \
	    $(FUZZ_BUILD)/corpus/$* tests/fuzz/corpus/$* tests/fuzz/regressions/$* \
	    > $(FUZZ_BUILD)/logs/$*.log 2>&1 || rc=$$?; \
	if [ $$rc -ne 0 ]; then \
	    tail -n 80 $(FUZZ_BUILD)/logs/$*.log; \
	    echo "fuzz: $* FAILED (exit $$rc); artifacts in $(FUZZ_BUILD)/artifacts/$*/"; exit 1; \
	fi; \
	st() { sed -n "s/^stat::$$1: *//p" $(FUZZ_BUILD)/logs/$*.log; }; \
	echo "fuzz: $* ok: $$(st number_of_executed_units) execs," \
	    "$$(st average_exec_per_sec) execs/s, $$(st new_units_added) new units," \
	    "corpus $$(ls $(FUZZ_BUILD)/corpus/$* | wc -l) found + $$(ls tests/fuzz/corpus/$* | wc -l) checked in"

fuzz: fuzz-build
	+@$(FUZZ_MAKE) -k $(FUZZ_TARGETS:%=fuzz-run-%) || \
	    { echo "fuzz: FAILED (see above)"; exit 1; }

fuzz-long: fuzz-build
	+@$(FUZZ_MAKE) -k -j$(FUZZ_JOBS) FUZZ_SECONDS=3600 \
	    $(FUZZ_TARGETS:%=fuzz-run-%) || { echo "fuzz-long: FAILED (see above)"; exit 1; }

# Replays every checked-in input once (-runs=0 executes the corpus directories and stops). The
# first directory, where libFuzzer would save anything new, is a scratch one: checked-in
# directories are never written.
fuzz-regress: fuzz-build
	@pass=0; fail=0; mkdir -p $(FUZZ_BUILD)/logs; for t in $(FUZZ_TARGETS); do \
	    mkdir -p tests/fuzz/corpus/$$t tests/fuzz/regressions/$$t; \
	    rm -rf $(FUZZ_BUILD)/regress/$$t; \
	    mkdir -p $(FUZZ_BUILD)/regress/$$t $(FUZZ_BUILD)/artifacts/$$t; \
	    if $(FUZZ_BUILD)/fuzz_$$t -runs=0 -timeout=$(FUZZ_TIMEOUT) \
	        -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t/ $(FUZZ_BUILD)/regress/$$t \
	        tests/fuzz/corpus/$$t tests/fuzz/regressions/$$t \
	        > $(FUZZ_BUILD)/logs/regress-$$t.log 2>&1; then \
	        pass=$$((pass + 1)); \
	    else \
	        fail=$$((fail + 1)); tail -n 60 $(FUZZ_BUILD)/logs/regress-$$t.log; \
	        echo "fuzz-regress: $$t FAILED"; \
	    fi; \
	done; \
	echo "fuzz-regress: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

# A merged input that crashes the current code belongs in tests/fuzz/regressions/<t>/ instead
# (with a report), so that fuzz-regress names each known bug once.
fuzz-merge: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p tests/fuzz/corpus/$$t $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/logs; \
	    n=$$(ls tests/fuzz/corpus/$$t | wc -l); \
	    $(FUZZ_BUILD)/fuzz_$$t -merge=1 tests/fuzz/corpus/$$t $(FUZZ_BUILD)/corpus/$$t \
	        > $(FUZZ_BUILD)/logs/merge-$$t.log 2>&1 || { echo "fuzz-merge: $$t FAILED"; exit 1; }; \
	    echo "fuzz-merge: $$t $$n -> $$(ls tests/fuzz/corpus/$$t | wc -l) inputs"; \
	done

-include $(wildcard $(FUZZ_BUILD)/obj/*.d $(FUZZ_BUILD)/harness/*.d)

.DEFAULT_GOAL := $(FUZZ_SAVED_GOAL)
