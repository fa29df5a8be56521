#!/usr/bin/env bash
# A wrapper device for fault tests: usage flaky.sh FAULT_FILE COMMAND [ARGS...]. If FAULT_FILE
# exists it is consumed and this one request misbehaves as it says (fail | hang | garbage);
# otherwise the request is passed to COMMAND (the real device) unchanged.
fault_file=$1
shift
if [ -f "$fault_file" ]; then
    mode=$(cat "$fault_file")
    rm -f "$fault_file"
    cat > /dev/null
    case "$mode" in
        fail) echo "digitiser: PLL unlocked" >&2; exit 4 ;;
        hang) sleep 600 ;;
        *) echo "garbage {"; exit 0 ;;
    esac
fi
exec "$@"
