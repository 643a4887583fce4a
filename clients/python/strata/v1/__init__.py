"""strata.v1 stubs, generated from proto/strata/v1 by clients/python/generate.sh."""
