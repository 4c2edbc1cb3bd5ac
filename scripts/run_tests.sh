#!/usr/bin/env bash
# The project's test command (README): the whole suite on CPU. GPU tests skip without CUDA; tests that read
# the real-data folder beside the checkout skip when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -ra --timeout=900 tests "$@"
