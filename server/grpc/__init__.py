"""The gRPC front door: KServe v2 `inference.GRPCInferenceService` (with Triton's extensions)
and grpc.health.v1, on their own port, over the DataPlane the HTTP door uses (docs/grpc.md)."""
