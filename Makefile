# warren — build, run and test.
#
#   make run     install missing Debian packages, build, start the daemon on 127.0.0.1:7070
#   make test    install missing Debian packages, build, run unit + integration tests
#   make SAN=1 BUILD=build-asan test-unit test-integration    the same under ASan+UBSan
#   make test-cgroup-v2    the daemon on cgroup v2 in a VM (Debian's kernel under qemu, ~1 min)
#   make fuzz    build the libFuzzer targets (fuzz/, clang) into build-fuzz/fuzz/
#   make fuzz-replay    run every fuzz target once over its committed corpus (bench/fuzz.sh fuzzes)
#
# Two binaries are built:
#   warren       the daemon, the CLI and the benchmark helpers (dynamically linked).
#   warren-init  PID 1 of every sandbox. It is a separate, *static* binary on purpose: it is exec'd
#                inside the sandbox's mount namespace, where the host's shared libraries may not
#                exist (any template), it must stay tiny because one copy runs in every sandbox and
#                is charged to the sandbox's memory cgroup, and it must not carry the daemon's code
#                or memory. The daemon copies it into a sealed memfd at start-up and execs that, so
#                no host file is reachable through /proc/1/exe.

BUILD ?= build
SAN ?=
PREFIX ?= /usr/local

# Build and test dependencies. Every program a test runs, on the host or in a sandbox (whose /usr
# is the host's), is here too: tests/fresh-root.sh checks that against a fresh Debian 12 root.
DEB_PKGS := build-essential pkg-config clang-format libuv1-dev node-llhttp libwslay-dev \
	libjansson-dev libseccomp-dev libsqlite3-dev libssl-dev libcmocka-dev libvterm-dev \
	libarchive-dev python3-pytest python3-websockets bubblewrap iproute2 procps e2fsprogs curl \
	less libcap2-bin clang libclang-rt-14-dev libcurl4-openssl-dev docker-registry skopeo umoci \
	openssl zstd busybox-static debootstrap

PKGS := libuv jansson sqlite3 libseccomp libcrypto libssl libcurl vterm libarchive
LLHTTP_DIR := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp

CC ?= cc
WARN := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wmissing-prototypes
OPT := -O2 -g
ifeq ($(SAN),1)
OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
endif
# The libFuzzer build (make fuzz): everything, llhttp included, carries coverage instrumentation
# and ASan+UBSan; only the fuzz targets link the fuzzer's main (-fsanitize=fuzzer). clang warns
# about libseccomp's SCMP_A0() initializers, which gcc accepts.
ifeq ($(FUZZ),1)
CC := clang
OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
	-fno-sanitize-recover=undefined
WARN += -Wno-missing-field-initializers
endif
CFLAGS_ALL = -std=gnu11 $(OPT) $(WARN) -D_GNU_SOURCE -Isrc -I$(LLHTTP_INC) \
	$(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
LDLIBS_ALL = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lwslay -lpthread $(LDLIBS)
LDFLAGS_ALL = $(OPT) $(LDFLAGS)

# Everything under src/ except the entry points goes into one archive that tests link against.
LIB_SRCS := $(filter-out src/main.c src/sandbox/init.c,$(wildcard src/*.c src/*/*.c))
LIB_OBJS := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LIB_SRCS))
LLHTTP_OBJS := $(patsubst $(LLHTTP_DIR)/%.c,$(BUILD)/obj/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))
FUZZ_SRCS := $(wildcard fuzz/fuzz_*.c)
FUZZ_NAMES := $(patsubst fuzz/fuzz_%.c,%,$(FUZZ_SRCS))
FUZZ_BINS := $(patsubst fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRCS))
HDRS := $(wildcard src/*.h src/*/*.h)

.PHONY: all deps run test test-unit test-integration test-cgroup-v2 bench format format-check \
	check-layers clean install fuzz fuzz-targets fuzz-replay

all: $(BUILD)/warren $(BUILD)/warren-init warren warren-init

# Convenience links at the top of the tree: ./warren run -- uname -a
warren warren-init: %: $(BUILD)/%
	@ln -sf $(BUILD)/$@ $@

$(BUILD)/obj/%.o: src/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(BUILD)/obj/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(OPT) -w -I$(LLHTTP_INC) -c -o $@ $<

$(BUILD)/libwarren.a: $(LIB_OBJS) $(LLHTTP_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/warren: $(BUILD)/obj/main.o $(BUILD)/libwarren.a
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LDLIBS_ALL)

# Never sanitized (static + ASan do not mix) and never linked with anything but libc.
$(BUILD)/warren-init: src/sandbox/init.c src/sandbox/proto.h
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -g $(WARN) -D_GNU_SOURCE -Isrc -static -o $@ src/sandbox/init.c

# test_initctl runs the real init binary.
$(BUILD)/tests/test_initctl: $(BUILD)/warren-init

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libwarren.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL) -o $@ $< $(BUILD)/libwarren.a $(LDLIBS_ALL) -lcmocka

$(BUILD)/bench/%: bench/%.c $(BUILD)/libwarren.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL) -o $@ $< $(BUILD)/libwarren.a $(LDLIBS_ALL)

# fuzz/harness.c: what several targets share (temporary trees, driving a loop over sockets).
$(BUILD)/fuzz/%: fuzz/%.c fuzz/harness.c fuzz/harness.h $(BUILD)/libwarren.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Ifuzz $(LDFLAGS_ALL) -fsanitize=fuzzer -o $@ $< fuzz/harness.c \
		$(BUILD)/libwarren.a $(LDLIBS_ALL)

fuzz:
	@$(MAKE) --no-print-directory FUZZ=1 BUILD=build-fuzz fuzz-targets

fuzz-targets: $(FUZZ_BINS)

# Each target once over each file of its corpus: a regression check, not a fuzzing run.
fuzz-replay: fuzz
	@for n in $(FUZZ_NAMES); do \
		out=$$(build-fuzz/fuzz/fuzz_$$n fuzz/corpus/$$n/* 2>&1) || { echo "$$out"; exit 1; }; \
		echo "fuzz_$$n: $$(ls fuzz/corpus/$$n | wc -l) inputs replayed"; done

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "warren: installing Debian packages:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "warren: run as root to install packages" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: deps
	@$(MAKE) --no-print-directory all
	@echo "warren: serving on http://127.0.0.1:7070 (state in ./.warren). In another terminal try:"
	@echo "    ./warren run -- uname -a"
	@echo "Ctrl-C stops the daemon and leaves its sandboxes running: the next 'make run' takes them"
	@echo "over (add --stop-sandboxes-on-exit to stop them instead)."
	exec ./$(BUILD)/warren serve --listen 127.0.0.1:7070 --state-dir ./.warren

test: deps
	@$(MAKE) --no-print-directory all $(UNIT_BINS) format-check check-layers
	@$(MAKE) --no-print-directory test-unit test-integration

test-unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

test-integration: $(BUILD)/warren $(BUILD)/warren-init
	WARREN_BIN=$(CURDIR)/$(BUILD)/warren /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration

# cgroup v2 on a real kernel whatever the host runs: Debian's kernel under qemu, the daemon in a
# delegated and in the root cgroup. Installs its own packages (qemu, debootstrap, ...), not part
# of `deps`; caches the kernel and root in /var/cache/warren-vm. See tests/vm/run-cgroup-v2.sh.
test-cgroup-v2: $(BUILD)/warren $(BUILD)/warren-init
	tests/vm/run-cgroup-v2.sh $(BUILD)

bench: all $(BENCH_BINS)

# The include arrows of DESIGN.md §3.
check-layers:
	@/usr/bin/python3 tests/check_layers.py

format:
	clang-format -i $(wildcard src/*.[ch] src/*/*.[ch] tests/unit/*.[ch] bench/*.[ch] fuzz/*.[ch])

format-check:
	@clang-format --dry-run --Werror $(wildcard src/*.[ch] src/*/*.[ch] tests/unit/*.[ch] bench/*.[ch] \
		fuzz/*.[ch])

clean:
	rm -rf build build-asan build-fuzz warren warren-init

install: all
	install -D -m 0755 $(BUILD)/warren $(DESTDIR)$(PREFIX)/bin/warren
	install -D -m 0755 $(BUILD)/warren-init $(DESTDIR)$(PREFIX)/libexec/warren/warren-init
