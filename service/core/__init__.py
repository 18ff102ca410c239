"""The transport-free core: a request's options, pre- and post-processing around the dynamic batcher, the
loaded model and its lifecycle, the service state. Imports neither FastAPI nor grpc (tested)."""
