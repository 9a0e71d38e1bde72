# bunce — PGXS build of record: make, make install, make installcheck.
# WERROR=1 turns warnings into errors (CI builds so).
PG_CONFIG ?= pg_config

# bunce builds for PostgreSQL 15: it calls 15's executor and table AM functions
# (ExecInsertIndexTuples with 7 arguments, table_multi_insert) and its shmem_request_hook.
PG_MAJOR := $(shell $(PG_CONFIG) --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
ifneq ($(PG_MAJOR),15)
$(error bunce builds for PostgreSQL 15, but $(PG_CONFIG) is PostgreSQL $(PG_MAJOR); set PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config)
endif

EXTENSION = bunce
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" bunce.control)

MODULE_big = bunce
OBJS = $(patsubst %.cpp,%.o,$(wildcard src/pg/*.cpp src/core/*.cpp))
DATA = $(wildcard extension/bunce--*.sql)

PG_CPPFLAGS = -isystem $(shell $(PG_CONFIG) --includedir-server) -Isrc/core -DBUNCE_VERSION='"$(EXTVERSION)"'
# The C++ flags, read by CMakeLists.txt too, so that the unit tests build the core as it ships
# (PGXS adds PostgreSQL's own: -O2 -fno-strict-aliasing -fwrapv, repeated here for CMake).
BUNCE_CXXFLAGS = -std=c++17 -O2 -fno-strict-aliasing -fwrapv -fno-omit-frame-pointer -Wall -Wextra -Wno-register -Wno-missing-field-initializers
PG_CXXFLAGS = $(BUNCE_CXXFLAGS)
ifeq ($(WERROR),1)
PG_CXXFLAGS += -Werror
endif
SHLIB_LINK = -lcurl -lstdc++

# pg_regress: the SQL surface, on a throwaway server of its own.
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --temp-instance=tmp_check_regress --temp-config=test/regress.conf
# isolation specs: concurrency of enqueue and claim.
ISOLATION = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --temp-instance=tmp_check_iso --temp-config=test/isolation.conf \
	--inputdir=test/isolation --outputdir=output_iso
# TAP: the worker's life against the Bunce stand-in.
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl
PROVE_FLAGS = -I test/t

EXTRA_CLEAN = tmp_check_regress tmp_check_iso output_iso

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The bitcode step for JIT inlining does not see PG_CXXFLAGS on its own.
COMPILE.cxx.bc += $(PG_CXXFLAGS)

$(OBJS): $(wildcard src/core/*.hpp src/pg/*.hpp)
