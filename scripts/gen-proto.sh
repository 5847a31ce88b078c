#!/usr/bin/env bash
# Regenerates collector/podresources_v1_pb2.py from collector/podresources_v1.proto.
# grpcio-tools 1.64.3 emits protobuf 5.26.1 gencode, which loads on every protobuf runtime from 5.26 on, including
# the 6.x line that is the newest for Python 3.9 hosts (newer grpcio-tools pin the runtime to their own release).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q "grpcio-tools==1.64.3"
"$tools/bin/python" -m grpc_tools.protoc -I . --python_out=. collector/podresources_v1.proto
