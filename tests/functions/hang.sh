#!/bin/sh
# A `command` function that never answers; its child must die with it.
sleep 300 &
echo $! > "${HANG_PID_FILE:-/dev/null}"
wait
