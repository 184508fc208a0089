#!/usr/bin/env bash
# Fetch the Apache Kafka broker (KRaft mode) for the Kafka output's tests: the broker's jars and
# their runtime dependencies from Maven Central (Maven and the machine's Java 17), pinned by
# tests/toolchain/kafka/pom.xml, into a cache keyed by version; a warm run costs nothing:
#   $KUBEVISION_CACHE/toolchain/kafka-<version>/libs/*.jar   (java -cp 'libs/*' kafka.Kafka ...)
# Prints that directory on stdout; with --where it only prints it, fetching nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBEVISION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevision}
log() { echo "[toolchain] $*" >&2; }

pom=$here/kafka/pom.xml
version=$(sed -nE 's#.*<kafka.version>([^<]+)</kafka.version>.*#\1#p' "$pom")
dir="$cache/toolchain/kafka-$version"
if [[ ${1:-} == --where ]]; then
  echo "$dir"
  exit 0
fi
if [[ -f $dir/libs/kafka_2.13-$version.jar && ${FORCE:-0} != 1 ]]; then
  log "kafka $version cached in $dir"
else
  for tool in java mvn; do
    command -v "$tool" >/dev/null || { log "kafka needs $tool (make system-packages installs maven)"; exit 1; }
  done
  start=$SECONDS
  rm -rf "$dir.partial" && mkdir -p "$dir.partial"
  mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$dir.partial/libs" >&2
  rm -rf "$dir" && mv "$dir.partial" "$dir"
  log "kafka $version fetched in $((SECONDS - start)) s ($(find "$dir/libs" -name '*.jar' | wc -l) jars)"
fi
echo "$dir"
