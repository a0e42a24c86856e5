# Thin wrapper over CMake presets; see README.md.
PREFIX ?= /usr/local
JOBS ?= $(shell nproc)
# test programs run two at a time: most of their time is spent waiting on daemons,
# timeouts and kills; the stress tests and the netns test run alone (RUN_SERIAL)
TEST_JOBS ?= 2
FUZZ_SECONDS ?= 20

.PHONY: all deps build demo test asan tsan fuzz bench install clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake --preset release >/dev/null
	@cmake --build build -j$(JOBS)

demo: build
	@scripts/demo.sh

# every test under AddressSanitizer + UndefinedBehaviorSanitizer, the stress tests under
# ThreadSanitizer, then a short fuzz run
test: deps
	@cmake --preset asan >/dev/null
	@cmake --build build/asan -j$(JOBS)
	@cd build/asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure --timeout 300 -j$(TEST_JOBS)
	@$(MAKE) --no-print-directory tsan
	@$(MAKE) --no-print-directory fuzz

# the stress tests (CTest label "stress") under ThreadSanitizer. Only those: the
# Criterion tests cannot run under TSan here (Criterion aborts at start with
# "Could not initialize inheritable arena"), so they run under ASan (make test).
tsan: deps
	@cmake --preset tsan >/dev/null
	@cmake --build build/tsan -j$(JOBS) --target stress_map_stress stress_io_stress
	@cd build/tsan && TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1 \
	  ctest -L stress --output-on-failure --timeout 300

fuzz: deps
	@cmake --preset fuzz >/dev/null
	@cmake --build build/fuzz -j$(JOBS)
	@scripts/fuzz.sh build/fuzz/bin $(FUZZ_SECONDS)

bench: build
	@scripts/install-deps.sh --bench
	@scripts/bench.sh

install: build
	@cmake --install build --prefix $(PREFIX)

clean:
	@rm -rf build
