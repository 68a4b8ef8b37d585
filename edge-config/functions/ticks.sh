#!/bin/sh
# ticks: a streaming `command` function (`streaming = true`): each line goes
# to the client as it is written. Five server-sent events, 200 ms apart.
for i in 1 2 3 4 5; do
  printf 'data: tick %s at %s\n\n' "$i" "$(date +%H:%M:%S.%N)"
  sleep 0.2
done
