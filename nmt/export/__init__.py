"""Models to and from other toolkits: `nmt export --to ctranslate2` (`ctranslate2`), and
Hugging Face MarianMT models in and out, `nmt import --from huggingface` and `nmt export --to
huggingface` (`huggingface`, with `sentencepiece_proto`); `source` is what every export starts
from. Decoding a CTranslate2 folder is
nmt.decoding.ct2."""
