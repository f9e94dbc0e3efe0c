#!/usr/bin/env bash
# The default search end to end: set up, prepare the built-in corpus, search, summarize.
# Extra arguments go to `mixsearch run` (e.g. a config file, --name, --num-samples).
source "$(dirname "$0")/setup.sh"
exec mixsearch run "$@"
