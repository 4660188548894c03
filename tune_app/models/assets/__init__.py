"""Package data for the offline ``tiny`` encoder (``tiny_vocab.txt``) and its builder."""
