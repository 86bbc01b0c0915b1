# The two commands that matter: `make demo` and `make test`. Both set themselves up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# No model hub: tiny models are built locally; real weights load from the HF cache only.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install fonts browser demo test test-fast lint format docs clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned in requirements.txt to the CPU build; installing it in the same command
	# keeps pip from pulling the multi-GB CUDA build for diffusers/accelerate.
	# constraints.txt holds every other package at the version tested here (no drift in CI).
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

install: $(STAMP) fonts

# Caption fonts for contact sheets (Latin, Arabic, Chinese, Korean): Debian's Noto packages, only
# when missing and apt is there. Never fails: without them a sheet escapes what no font holds.
FONT_PKGS  := fonts-noto-core fonts-noto-cjk
FONT_FILES := /usr/share/fonts/truetype/noto/NotoSansArabic-Regular.ttf \
              /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc
fonts:
	@for f in $(FONT_FILES); do test -e $$f || missing=1; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing caption fonts: $(FONT_PKGS)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(FONT_PKGS) >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1; \
	    apt-get install -y -qq --no-install-recommends $(FONT_PKGS) >/dev/null 2>&1; } || \
	  echo "note: could not install $(FONT_PKGS); contact sheets escape characters no font holds"; \
	else \
	  echo "note: $(FONT_PKGS) missing (needs root + apt); contact sheets escape characters no font holds"; \
	fi

# Headless Chromium for the browser tests (tests/browser/): Debian's package, only when missing
# and apt is there. Never fails: without it those tests skip, saying why.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (headless browser tests)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1; \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } || \
	  echo "note: could not install chromium; the browser tests will skip"; \
	else \
	  echo "note: no $(CHROMIUM) (needs root + apt-get); the browser tests will skip"; \
	fi

demo: install
	$(BIN)/farm demo

test: install lint docs browser
	$(BIN)/python -m pytest

# The edit-test loop: everything that starts no stack (about a minute).
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# mypy's settings (what it checks, the strict core) are in pyproject.toml; its cache in
# .mypy_cache makes a run after a small change take seconds.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

# The docs site (mkdocs.yml, docs/) into site/; --strict fails on a broken link. Offline: no fonts
# or scripts fetched at build time.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	-$(BIN)/farm down
	rm -rf $(VENV) .farm out site .pytest_cache .ruff_cache .mypy_cache
