"""The networks: the `EncoderDecoder` contract every architecture meets (`base`), the Transformer
(`transformer`) and the RNN (`rnn`), their attention mechanisms (`attention`), the builder that
turns a recipe or a checkpoint into a model (`builder`), ensembles (`ensemble`) and int8
quantization (`quantize`)."""
