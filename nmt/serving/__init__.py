"""`nmt serve`: the HTTP app (`app`, FastAPI; the `serve` extra) and the dynamic batcher that
gathers requests into batches (`batcher`)."""
