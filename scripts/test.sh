#!/usr/bin/env bash
# The test suite on real Ray, Optuna and torch (CPU). Extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
exec python -m pytest "$@"
