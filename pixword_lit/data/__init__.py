"""From shards to batches: shard sets, the element sequence of a document, the ordered
stream and its worker processes, and `pixword inspect`."""
