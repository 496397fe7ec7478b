"""Host-side data: corpus builders, tokenizer, token store, packing and step-indexed batches."""
