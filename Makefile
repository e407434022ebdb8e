# Two commands for a fresh machine:  make run   |   make test
# Everything runs on Python 3.12 (Dify's plugin runner) in ./.venv.

VENV   := .venv
PY     := $(VENV)/bin/python
PY312  := $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
            $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: run test lint typecheck unit venv clean probe package bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -n "$(PY312)" || { echo "Python 3.12 not found (install it, e.g. 'pyenv install 3.12')"; exit 1; }
	$(PY312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed

## make run: with a .env (copy .env.example) the plugin connects to your Dify by remote debugging;
## without one, a local playground: the plugin under the tests' daemon emulator, you type as a WeChat user.
run: venv
	@if [ -f .env ]; then $(PY) -m main; else $(PY) -m tools.playground; fi

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy .

unit: venv
	$(PY) -m pytest -q

## make test: lint, types and the whole test suite (unit + integration under the daemon emulator).
test: lint typecheck unit

## make probe URL=https://<dify-host>/e/<hook_id>/wechat TOKEN=… [APP_ID=… AES_KEY=…] [MODE=plain|compatible|safe]
##   [PLATFORM=wecom AGENT_ID=…] [TIMEOUT=5] [ALLOW_LOCAL=1]: check a deployed endpoint the way
##   WeChat or WeCom does (tools/probe.py; a …/wecom URL is probed as WeCom, APP_ID = CorpID).
## Values may also come from the environment (TOKEN or PROBE_TOKEN, …); the recipe is not echoed.
probe: venv
	@test -n "$(URL)" || { echo "usage: make probe URL=https://<dify-host>/e/<hook_id>/wechat TOKEN=… [APP_ID=… AES_KEY=…] [MODE=…]"; exit 2; }
	@PROBE_TOKEN="$(or $(TOKEN),$(PROBE_TOKEN))" PROBE_APP_ID="$(or $(APP_ID),$(PROBE_APP_ID))" \
	  PROBE_AES_KEY="$(or $(AES_KEY),$(PROBE_AES_KEY))" \
	  PROBE_AGENT_ID="$(or $(AGENT_ID),$(PROBE_AGENT_ID))" PROBE_PLATFORM="$(or $(PLATFORM),$(PROBE_PLATFORM))" \
	  $(PY) -m tools.probe "$(URL)" $(if $(MODE),--mode "$(MODE)") \
	  $(if $(TIMEOUT),--timeout "$(TIMEOUT)") $(if $(ALLOW_LOCAL),--allow-local)

## make package: dist/<name>-<version>.difypkg for Plugins → Install plugin → Local package file
## (tools/package.py; .difyignore decides what goes in).
package: venv
	$(PY) -m tools.package

## make bench: CPU per message against wechatpy (bench/cpu.py), then 200 users at once with
## real WeChat timing under the daemon emulator (bench/load.py; about a minute).
bench: venv
	$(PY) -m bench.cpu
	$(PY) -m bench.load

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache dist
