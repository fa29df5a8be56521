#!/usr/bin/env bash
# A device that answers every request with the contents of the file named by $1 (the tests
# write malformed replies there), or floods stdout forever when $1 is --flood.
cat > /dev/null
if [ "$1" = "--flood" ]; then
    exec yes '[[[1, 2, 3, 4]]],'
fi
cat "$1"
