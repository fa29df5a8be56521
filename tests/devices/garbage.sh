#!/usr/bin/env bash
# A device that answers with something that is not JSON, and exits 0.
cat > /dev/null
echo "Measurement complete. Counts: 512 488"
