"""HTTP routes; they reach the service state through the dependency aliases in `service.http.deps`."""
