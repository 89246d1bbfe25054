"""Stubs generated from server/grpc/protos/ (do not edit: server/grpc/protos/generate.sh).

`POOL` is the descriptor pool they are built into: a private one, since tritonclient.grpc and
the KServe SDK register the same `inference.*` names in protobuf's default pool, and a client
imported into the server's process must not collide with the server's copies.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
