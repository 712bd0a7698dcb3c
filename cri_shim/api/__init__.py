"""Generated CRI v1 protobuf and gRPC stubs (see proto/ and hack/gen-proto)."""
