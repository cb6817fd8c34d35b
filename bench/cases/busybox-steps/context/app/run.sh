#!/bin/sh
set -e
echo "running in $APP_HOME"
ls /app/etc
