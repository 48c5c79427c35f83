"""Text to tensors: SentencePiece tokenizers (`tokenizer`), `nmt preprocess` (`preprocess`:
filter, tokenize, binarize), the prepared data as training reads it (`dataset`: memory-mapped
token ids), and batches (`batches`: padding, token-count and size batching)."""
