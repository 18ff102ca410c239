"""The HTTP adapter (FastAPI): the app, its middleware, the routes, the error bodies and response models."""
