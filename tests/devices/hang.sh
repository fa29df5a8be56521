#!/usr/bin/env bash
# A device that never answers: starts a child that sleeps (its pid written to the file named
# by $1, if given) and waits for it. The exec device must kill the whole process group.
cat > /dev/null
sleep 600 &
if [ -n "$1" ]; then echo $! > "$1"; fi
wait
