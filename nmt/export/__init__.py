"""Models out to other runtimes: `nmt export --to ctranslate2` (`ctranslate2`). Decoding an
exported folder is nmt.decoding.ct2."""
