# bunce — PGXS build of record: make, make install, make installcheck.
EXTENSION = bunce
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" bunce.control)

MODULE_big = bunce
OBJS = $(patsubst %.cpp,%.o,$(wildcard src/pg/*.cpp src/core/*.cpp))
DATA = $(wildcard extension/bunce--*.sql)

PG_CPPFLAGS = -isystem $(shell $(PG_CONFIG) --includedir-server) -Isrc/core -DBUNCE_VERSION='"$(EXTVERSION)"'
PG_CXXFLAGS = -std=c++17 -Wall -Wextra -Wno-register -Wno-missing-field-initializers -fno-omit-frame-pointer
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

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The bitcode step for JIT inlining does not see PG_CXXFLAGS on its own.
COMPILE.cxx.bc += $(PG_CXXFLAGS)

$(OBJS): $(wildcard src/core/*.hpp src/pg/*.hpp)
