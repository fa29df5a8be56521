#!/usr/bin/env bash
# A device that always fails: reads its request, complains on stderr, exits with status 3.
cat > /dev/null
echo "AWG: channel 1 is not responding (error -1073807339)" >&2
exit 3
