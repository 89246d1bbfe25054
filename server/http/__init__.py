"""The HTTP front door: KServe v2 REST, the Triton extensions, token management, docs."""
