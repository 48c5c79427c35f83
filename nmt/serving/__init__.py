"""`nmt serve`: the FastAPI app (`app`), its request and answer bodies (`schema`), the scheduler
that batches requests and decodes short ones between the steps of long ones (`batcher`), API
keys and rate limits (`access`), Prometheus metrics (`metrics`) and LibreTranslate's API
(`libretranslate`)."""
