#!/usr/bin/env bash
# Create the shared virtualenv and install the project's dependencies into it.
# Usage: bootstrap.sh PYTHON VENV STAMP
# Torch is installed once and then held at the installed build (a constraint), so no
# later dependency can pull a second torch build. vLLM (extra `gpu`) is never installed here.
set -euo pipefail
python="$1"; venv="$2"; stamp="$3"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need java || ! need mvn; then
  echo "installing Java 17 and Maven (needed once to fetch and run Apache Kafka)"
  if need apt-get; then
    apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
  else
    echo "please install Java 17+ and Maven" >&2; exit 1
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
torch_version="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [ -n "$torch_version" ]; then
  echo "torch==$torch_version" > "$constraints"
fi
"$venv/bin/python" -m pip install -q -c "$constraints" -e ".[test]"
"$venv/bin/python" -m pip check
rm -f "$venv"/.deps-*
touch "$stamp"
