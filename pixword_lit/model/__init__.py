"""The model, free of Lightning: layers, the PixWordModel, the batch it reads, the vocabulary
layout and the swappable components (folding, attention, embedding, objective)."""
