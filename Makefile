# tutti: one plain Makefile.
#   make            build build/tutti (release, -O2, -Werror)
#   make DEBUG=1    ASan + UBSan build in build-debug/
#   make test       build and run every test (tests/run.sh); ends with "N passed, N failed, N skipped"
#   make bench      benchmarks (tutti bench on a generated Llama-3-8B-shaped model)
#   make run        install missing Debian packages (as root) or print the apt line, build, run the demo
#   make MPI=0      build without MPI even if mpicc is found (auto by default)
#   make CUDA=1     build the CUDA backend (auto when nvcc is found)

CC ?= gcc
ARCH := $(shell uname -m)
DEBUG ?= 0

ifeq ($(DEBUG),1)
  BUILD := build-debug
  OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDOPT := -fsanitize=address,undefined
else
  BUILD := build
  OPT := -O2 -g
  LDOPT :=
endif

# Debian packages the build needs (and the tools the tests need).
DEB_BUILD := build-essential pkg-config libpcre2-dev libxxhash-dev libopenmpi-dev openmpi-bin libedit-dev \
             libmicrohttpd-dev libjansson-dev
DEB_TEST := gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user tmux iproute2 node:nodejs npm:npm curl

PCRE2_CFLAGS := $(shell pkg-config --cflags libpcre2-8 2>/dev/null)
PCRE2_LIBS := $(shell pkg-config --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)

# MPI (Open MPI): on when mpicc is found, MPI=0 turns it off. Only
# src/comm/comm_mpi.c sees mpi.h; TT_HAVE_MPI tells comm.c and the tests.
MPI ?= $(shell command -v mpicc >/dev/null 2>&1 && echo 1 || echo 0)
ifeq ($(MPI),1)
  MPI_DEFS := -DTT_HAVE_MPI
  MPI_CFLAGS := $(shell mpicc --showme:compile)
  MPI_LIBS := $(shell mpicc --showme:link)
endif

CFLAGS_COMMON := -std=c11 -Wall -Wextra -Werror -Wno-unused-parameter -D_GNU_SOURCE -pthread \
                 -Isrc $(PCRE2_CFLAGS) $(MPI_DEFS)
CFLAGS := $(CFLAGS_COMMON) $(OPT) $(EXTRA_CFLAGS)
LDLIBS := $(PCRE2_LIBS) $(MPI_LIBS) -lxxhash -lmicrohttpd -ljansson -lm -pthread

# Per-instruction-set kernel files get their own flags; the rest is generic.
FLAGS_avx2 := -mavx2 -mfma -mf16c
FLAGS_avx512 := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx2 -mfma -mf16c

LIB_SRC := $(filter-out src/cli/%, $(wildcard src/*/*.c))
ifneq ($(ARCH),x86_64)
  LIB_SRC := $(filter-out %_avx2.c %_avx512.c, $(LIB_SRC))
endif
ifneq ($(ARCH),aarch64)
  LIB_SRC := $(filter-out %_neon.c, $(LIB_SRC))
endif
ifneq ($(MPI),1)
  LIB_SRC := $(filter-out src/comm/comm_mpi.c, $(LIB_SRC))
endif
# CUDA: on when nvcc is found (in PATH or /usr/local/cuda/bin); CUDA=0 turns it
# off. nvcc compiles src/kcuda/*.cu; engine_cuda.c replaces engine_nocuda.c;
# TT_HAVE_CUDA tells the tests. Hopper machine code plus PTX for newer GPUs.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA ?= $(if $(NVCC),1,0)
ifeq ($(CUDA),1)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
  CU_SRC := $(wildcard src/kcuda/*.cu)
  CU_OBJ := $(CU_SRC:%.cu=$(BUILD)/%.o)
  LIB_SRC := $(filter-out src/engine/engine_nocuda.c, $(LIB_SRC))
  CFLAGS += -DTT_HAVE_CUDA -I$(CUDA_HOME)/include
  LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lstdc++ -ldl -lrt
  NVFLAGS := -O3 -std=c++17 -Isrc -gencode arch=compute_90a,code=sm_90a \
             -gencode arch=compute_80,code=compute_80 \
             -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-Werror
else
  LIB_SRC := $(filter-out src/engine/engine_cuda.c, $(LIB_SRC))
endif
CLI_SRC := $(wildcard src/cli/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
ifeq ($(MPI),1)
  # run by tests/comm_mpi_test.sh under mpirun
  TEST_BIN += $(BUILD)/tests/mpi_comm_driver
endif

.PHONY: test-gpu all test tests-bin bench bench-kcpu run deps deps-test clean format test-neon

all: $(BUILD)/tutti

$(BUILD)/libtutti.a: $(LIB_OBJ) $(CU_OBJ) Makefile
	@rm -f $@
	ar rcs $@ $(LIB_OBJ) $(CU_OBJ)

# libedit: line editing and history for `tutti chat`; only the tutti binary links it.
CLI_LIBS := -ledit
$(BUILD)/tutti: $(CLI_OBJ) $(BUILD)/libtutti.a
	$(CC) $(LDOPT) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libtutti.a $(CLI_LIBS) $(LDLIBS)

$(BUILD)/src/%_avx2.o: src/%_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(FLAGS_avx2) -MMD -MP -c $< -o $@

$(BUILD)/src/%_avx512.o: src/%_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(FLAGS_avx512) -MMD -MP -c $< -o $@

$(BUILD)/src/comm/comm_mpi.o: CFLAGS += $(MPI_CFLAGS)

$(BUILD)/src/kcuda/%.o: src/kcuda/%.cu $(wildcard src/kcuda/*.h src/kcuda/*.cuh) src/base/base.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

# On a machine with an NVIDIA GPU: the kernels against the CPU reference, and
# every model against its goldens through the CLI on the GPU; GPU ranks under
# mpirun and the NCCL backend (tests/gpu_test.sh runs test_comm_nccl).
test-gpu: all $(BUILD)/tests/test_kcuda $(BUILD)/tests/test_kcuda_moe $(BUILD)/tests/test_kcuda_top $(BUILD)/tests/test_comm_nccl
	@$(BUILD)/tests/test_kcuda; $(BUILD)/tests/test_kcuda_moe; $(BUILD)/tests/test_kcuda_top; TT_GPU_MV_BULK=1 $(BUILD)/tests/test_kcuda q6_q4_groups; TUTTI=$(BUILD)/tutti sh tests/gpu_test.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/tests/%: tests/%.c $(BUILD)/libtutti.a tests/test.h tests/kcuda_test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDOPT) $(LDFLAGS) -MMD -MP -o $@ $< $(BUILD)/libtutti.a $(LDLIBS)

# NEON kernels: cross-compiled for aarch64 and run under qemu-user by the tests.
NEON_SRC := src/base/base.c src/base/threadpool.c $(wildcard src/quant/*.c) \
            $(filter-out %_avx2.c %_avx512.c, $(wildcard src/kcpu/*.c)) tests/test_kcpu.c
$(BUILD)/neon/test_kcpu: $(NEON_SRC) $(wildcard src/*/*.h) tests/test.h
	@mkdir -p $(dir $@)
	aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -D_GNU_SOURCE \
	    -pthread -Isrc -static -o $@ $(NEON_SRC) -lm
test-neon: $(BUILD)/neon/test_kcpu

# `make test` runs every test twice over: the release build, then the C tests
# and the CLI tests again on the ASan+UBSan build (tagged "asan:").
tests-bin: all $(TEST_BIN)

test: deps-test
	@$(MAKE) --no-print-directory tests-bin
	@$(MAKE) --no-print-directory DEBUG=1 tests-bin
	@BUILD=$(BUILD) SAN_BUILD=build-debug sh tests/run.sh

bench: all
	@sh tests/bench.sh $(BUILD)/tutti

# kernel microbenchmark: decode GB/s and prefill GOPS per type vs measured bandwidth
$(BUILD)/bench_kcpu: tests/bench_kcpu.c $(BUILD)/libtutti.a
	$(CC) $(CFLAGS) $(LDOPT) -o $@ $< $(BUILD)/libtutti.a -lm -pthread
bench-kcpu: $(BUILD)/bench_kcpu
	$(BUILD)/bench_kcpu

deps:
	@sh tools/deps.sh $(DEB_BUILD)

deps-test: deps
	@sh tools/deps.sh $(DEB_TEST)

run: deps
	@$(MAKE) --no-print-directory all
	@sh tools/demo.sh $(BUILD)/tutti

format:
	clang-format -i src/*/*.c src/*/*.h tests/*.c tests/*.h

clean:
	rm -rf build build-debug

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
