"""Pure-Python pieces shared by every service's domain layer (no grpc, no redis)."""
