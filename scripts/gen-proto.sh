#!/usr/bin/env bash
# Regenerates the Python modules of the gRPC APIs the project speaks:
# - collector/attribution/podresources_v1_pb2.py from collector/attribution/podresources_v1.proto (kubelet's pod-resources API, the
#   collector's own client);
# - tests/support/cri_runtime_v1_pb2{,_grpc}.py from tests/support/cri_runtime_v1.proto, the CRI
#   RuntimeService/ImageService API the tests drive containerd with (kubernetes/cri-api
#   pkg/apis/runtime/v1/api.proto at tag v0.36.3, commit 1733b6a9fa123c5887eefa14523c532b12827f73, verbatim with
#   its Apache-2.0 header; the collector itself does not speak CRI).
# grpcio-tools 1.64.3 emits protobuf 5.26.1 gencode, which loads on every protobuf runtime from 5.26 on, including
# the 6.x line that is the newest for Python 3.9 hosts (newer grpcio-tools pin the runtime to their own release).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q "grpcio-tools==1.64.3"
"$tools/bin/python" -m grpc_tools.protoc -I . --python_out=. collector/attribution/podresources_v1.proto
"$tools/bin/python" -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. tests/support/cri_runtime_v1.proto
