"""Raw data -> WebDataset shards of pixels (8-bit RGB PNG) for pixword; see README.md."""
