"""Small helpers every layer may use: text files and atomic writes (`files`), the run folder's
lock (`lock`), devices and precision (`device`), and matplotlib on demand (`plot`)."""
