#!/bin/sh
# Regenerate server/grpc/generated/ from the .proto files beside this script (make grpc-stubs).
#
# The protos are Triton's (github.com/triton-inference-server/common, protobuf/): package
# `inference`, a superset of KServe's grpc_predict_v2.proto, and grpc.health.v1.
# The generated modules are then made package-relative and bound to a private descriptor pool
# (server/grpc/generated/__init__.py): tritonclient.grpc and the KServe SDK register the same
# message names in protobuf's default pool, and a client in the server's process must not
# collide with the server's own copies.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../generated"
python=${PYTHON:-python3}
"$python" -m grpc_tools.protoc -I "$here" --python_out="$out" --grpc_python_out="$out" \
    "$here/grpc_service.proto" "$here/model_config.proto" "$here/health.proto"
for f in "$out"/*_pb2.py "$out"/*_pb2_grpc.py; do
    sed -i \
        -e 's/^import \([a-z_]*_pb2\) as /from . import \1 as /' \
        -e 's/_descriptor_pool\.Default()/POOL/' \
        -e 's/^from google\.protobuf import descriptor_pool as _descriptor_pool$/from . import POOL/' \
        "$f"
done
