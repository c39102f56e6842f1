"""HTTP routes, one module per resource; each is thin and calls app.pipeline.Service."""
