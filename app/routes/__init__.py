"""HTTP routes, one module per resource; each is thin and calls the part that owns the job
(app.model_manager, app.predictor, app.retraining)."""
