"""From a trained model to text: the `Translator` (`translator`: batching, order, prefixes and
constraints), what goes in and comes out (`records`), the searches (`search`: greedy, beam,
sampling, constraints), the engines that run them (`engine`: ours in PyTorch; `ct2`: an
exported folder in CTranslate2), and `nmt translate`'s line formats (`lines`)."""
