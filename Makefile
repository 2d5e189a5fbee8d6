# luaserve: `make` builds ./luaserve, `make run` serves apps/demo, `make test`
# runs every spec and test, `make bench` the benchmarks, `make install`.
# Each of them first installs the Debian packages that are missing.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
# Where the framework's Lua modules are installed (compiled into the binary).
LUADIR ?= $(PREFIX)/share/luaserve/lua
LLHTTP_DIR ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp
PORT ?= 8080

# npm packages (issue 12), fetched with curl into the build tree and
# checked against the registry's sha512 `integrity` (npm is not needed).
# swagger-ui-dist: the files /docs serves (installed by `make install`
# beside the Lua folder); redoc: the bundle /redoc serves (likewise); @seriousme/openapi-schema-validator: the
# OpenAPI 3.1 JSON Schema that tests/test_openapi.py validates against.
NPM_REGISTRY ?= https://registry.npmjs.org
SWAGGER_UI_VERSION = 5.35.0
SWAGGER_UI_SHA512 = U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==
SWAGGER_UI = build/swagger-ui
SWAGGER_UI_FILES = swagger-ui.css swagger-ui-bundle.js swagger-ui-standalone-preset.js \
                   oauth2-redirect.html oauth2-redirect.js favicon-16x16.png \
                   favicon-32x32.png LICENSE NOTICE
# redoc: the one file /redoc serves (its standalone bundle), installed
# beside swagger-ui.
REDOC_VERSION = 2.5.4
REDOC_SHA512 = M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ==
REDOC = build/redoc
REDOC_FILES = bundles/redoc.standalone.js LICENSE
OAS_VALIDATOR_VERSION = 2.11.0
OAS_VALIDATOR_SHA512 = DL8TjmjkUS76OaK/TinoRtf6PrirsWfMZiv62ifP9eq3UOpoLqSGZKpCErxMzz0i1pjECSPYY+qZ1SRYEgiEvg==
OAS_SCHEMA = build/openapi/schema-3.1.json

# Debian packages: build and run (PACKAGES), the tests' real clients
# (TEST_PACKAGES), the benchmarks (BENCH_PACKAGES).
PACKAGES = gcc make pkg-config luajit2 libluajit2-5.1-dev libuv1-dev \
           node-llhttp lua-cjson lua-busted libssl-dev openssl \
           ca-certificates zlib1g-dev libwslay-dev libpq-dev libhiredis-dev \
           media-types curl
TEST_PACKAGES = python3 curl nodejs nghttp2-client wrk python3-websockets \
                node-ws postgresql redis-server haproxy nginx prometheus \
                chromium python3-jsonschema python3-uvicorn
BENCH_PACKAGES = wrk postgresql python3-asyncpg nginx valgrind
# tests/bench/ws.sh: its peers (uvicorn as `uvicorn[standard]` runs it)
BENCH_PACKAGES += nodejs node-ws python3-uvicorn python3-websockets \
                  python3-uvloop python3-httptools

CC ?= cc
CFLAGS ?= -O2 -g
WARN = -Wall -Wextra -Wshadow -Wno-unused-parameter
PKG_CFLAGS = $(shell pkg-config --cflags luajit libuv openssl zlib libpq hiredis 2>/dev/null)
# Debian's libwslay-dev ships no pkg-config file.
PKG_LIBS = $(shell pkg-config --libs luajit libuv openssl zlib libpq hiredis 2>/dev/null) -lwslay

# SAN=1: AddressSanitizer + UndefinedBehaviorSanitizer, built apart.
ifeq ($(SAN),1)
BUILD = build/san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer \
           -fno-sanitize-recover=undefined
CFLAGS = -O1 -g
else
BUILD = build/release
# Link-time optimization: the core's small helpers (buffers, handle slots,
# the stream's writes) inline across files: about 3 % fewer instructions
# per request (tests/bench/instructions.sh).
SANFLAGS =
LTOFLAGS = -flto=auto
endif

CORE_SRCS = core/body.c \
            core/buf.c \
            core/client.c \
            core/compress.c \
            core/copy.c \
            core/crypto.c \
            core/ffi.c \
            core/fs.c \
            core/http.c \
            core/json.c \
            core/log.c \
            core/main.c \
            core/master.c \
            core/metrics.c \
            core/pg.c \
            core/pgquery.c \
            core/pgresult.c \
            core/pool.c \
            core/proc.c \
            core/random.c \
            core/redis.c \
            core/respond.c \
            core/runtime.c \
            core/server.c \
            core/shared.c \
            core/shm.c \
            core/shmdict.c \
            core/shutdown.c \
            core/static.c \
            core/stream.c \
            core/tcp.c \
            core/timer.c \
            core/tls.c \
            core/ws.c
LLHTTP_SRCS = $(LLHTTP_DIR)/api.c $(LLHTTP_DIR)/http.c $(LLHTTP_DIR)/llhttp.c

CORE_OBJS = $(patsubst core/%.c,$(BUILD)/core/%.o,$(CORE_SRCS))
LLHTTP_OBJS = $(patsubst $(LLHTTP_DIR)/%.c,$(BUILD)/llhttp/%.o,$(LLHTTP_SRCS))
BIN = $(BUILD)/luaserve

# The binary the tests run: the sanitizer build or ./luaserve.
ifeq ($(SAN),1)
TEST_BIN = $(CURDIR)/$(BIN)
else
TEST_BIN = $(CURDIR)/luaserve
endif

.PHONY: all build deps test-deps bench-deps run test test-spec bench install \
        install-bin uninstall clean docs-check

# Packages first, then the build in a make of its own: the build's rules
# name files that packages install (llhttp's sources), and make decides how
# to build a file when it reads the rules, before any recipe has run.
all: deps
	@$(MAKE) --no-print-directory build

build: luaserve $(SWAGGER_UI)/swagger-ui-bundle.js $(REDOC)/redoc.standalone.js

# Install what a fresh machine lacks (apt-get, through sudo when not root).
deps:
	@missing=""; for p in $(PACKAGES) $(EXTRA_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

test-deps:
	@$(MAKE) --no-print-directory deps EXTRA_PACKAGES="$(TEST_PACKAGES)"

bench-deps:
	@$(MAKE) --no-print-directory deps EXTRA_PACKAGES="$(BENCH_PACKAGES)"

luaserve: $(BUILD)/luaserve
	@if [ "$(SAN)" != 1 ]; then cp $(BUILD)/luaserve luaserve.tmp && mv -f luaserve.tmp luaserve; fi

$(BIN): $(CORE_OBJS) $(LLHTTP_OBJS)
	$(CC) $(SANFLAGS) $(LTOFLAGS) -o $@ $^ $(PKG_LIBS) -lm -Wl,-E

$(BUILD)/core/%.o: core/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SANFLAGS) $(LTOFLAGS) $(WARN) -MMD -MP -I$(LLHTTP_INC) $(PKG_CFLAGS) \
	  -DLS_LUA_DIR='"$(LUADIR)"' -c -o $@ $<

# llhttp's generated sources, compiled from where node-llhttp puts them.
$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SANFLAGS) $(LTOFLAGS) -w -I$(LLHTTP_INC) -c -o $@ $<

-include $(CORE_OBJS:.o=.d)

# main.c compiles LUADIR in: rebuild it when LUADIR changes.
$(BUILD)/core/main.o: $(BUILD)/luadir.stamp
$(BUILD)/luadir.stamp: FORCE
	@mkdir -p $(dir $@)
	@echo '$(LUADIR)' | cmp -s - $@ || echo '$(LUADIR)' > $@

FORCE:

# ---- npm packages (issue 12): see the variables at the top.

# npm_fetch URL SHA512 DEST: download a tarball, check it, unpack to DEST.
define npm_fetch
	@mkdir -p build/npm
	@echo "fetching $(1)"
	@curl -fsSL --retry 3 -o build/npm/fetch.tgz "$(1)"
	@got=$$(openssl dgst -sha512 -binary build/npm/fetch.tgz | base64 -w0); \
	  if [ "$$got" != "$(2)" ]; then echo "sha512 mismatch for $(1)"; rm -f build/npm/fetch.tgz; exit 1; fi
	@rm -rf $(3).tmp && mkdir -p $(3).tmp && tar xzf build/npm/fetch.tgz -C $(3).tmp
	@rm -f build/npm/fetch.tgz
endef

$(SWAGGER_UI)/swagger-ui-bundle.js:
	$(call npm_fetch,$(NPM_REGISTRY)/swagger-ui-dist/-/swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz,$(SWAGGER_UI_SHA512),$(SWAGGER_UI))
	@mkdir -p $(SWAGGER_UI)
	@cd $(SWAGGER_UI).tmp/package && cp $(SWAGGER_UI_FILES) $(CURDIR)/$(SWAGGER_UI)/
	@rm -rf $(SWAGGER_UI).tmp

$(REDOC)/redoc.standalone.js:
	$(call npm_fetch,$(NPM_REGISTRY)/redoc/-/redoc-$(REDOC_VERSION).tgz,$(REDOC_SHA512),$(REDOC))
	@mkdir -p $(REDOC)
	@cd $(REDOC).tmp/package && cp $(REDOC_FILES) $(CURDIR)/$(REDOC)/
	@rm -rf $(REDOC).tmp

$(OAS_SCHEMA):
	$(call npm_fetch,$(NPM_REGISTRY)/@seriousme/openapi-schema-validator/-/openapi-schema-validator-$(OAS_VALIDATOR_VERSION).tgz,$(OAS_VALIDATOR_SHA512),build/openapi)
	@mkdir -p $(dir $(OAS_SCHEMA))
	@cp build/openapi.tmp/package/schemas/v3.1/schema.json $(OAS_SCHEMA)
	@rm -rf build/openapi.tmp

# A person's look at /docs: the demo served, headless chromium, a
# screenshot in build/docs.png (tests/docs_check.py).
docs-check: test-deps all
	LUASERVE="$(TEST_BIN)" LUASERVE_LUA_DIR="$(CURDIR)/lua" /usr/bin/python3 tests/docs_check.py build/docs.png

run: all
	./luaserve apps/demo --port $(PORT)

# Everything: the busted specs through the real core, then the real binary
# over loopback sockets. SAN=1 runs both on the sanitizer build.
test: test-deps all $(OAS_SCHEMA)
	@LUASERVE="$(TEST_BIN)" LUASERVE_LUA_DIR="$(CURDIR)/lua" tests/run

test-spec: all
	LUASERVE_LUA_DIR="$(CURDIR)/lua" $(TEST_BIN) busted spec

bench: all bench-deps
	tests/bench/run

install: install-bin
	install -d $(DESTDIR)$(LUADIR)/luaserve $(DESTDIR)$(LUADIR)/luaserve/middleware
	install -m 644 lua/luaserve/*.lua $(DESTDIR)$(LUADIR)/luaserve/
	install -m 644 lua/luaserve/middleware/*.lua $(DESTDIR)$(LUADIR)/luaserve/middleware/
	install -d $(DESTDIR)$(LUADIR)/../swagger-ui
	install -m 644 $(addprefix $(SWAGGER_UI)/,$(SWAGGER_UI_FILES)) $(DESTDIR)$(LUADIR)/../swagger-ui/
	install -d $(DESTDIR)$(LUADIR)/../redoc
	install -m 644 $(addprefix $(REDOC)/,$(notdir $(REDOC_FILES))) $(DESTDIR)$(LUADIR)/../redoc/

# The binary alone (luarocks installs the modules itself, from the rockspec).
install-bin: all
	install -d $(DESTDIR)$(BINDIR)
	install -m 755 luaserve $(DESTDIR)$(BINDIR)/luaserve

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/luaserve
	rm -rf $(DESTDIR)$(LUADIR)/luaserve
	rm -rf $(DESTDIR)$(LUADIR)/../swagger-ui
	rm -rf $(DESTDIR)$(LUADIR)/../redoc

clean:
	rm -rf build luaserve
