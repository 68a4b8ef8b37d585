#!/bin/sh
# upper: a `command` function: event on stdin, result on stdout.
exec tr '[:lower:]' '[:upper:]'
