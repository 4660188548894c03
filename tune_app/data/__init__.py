"""Data: RedSM5 loading, the embedded synthetic set, and encoding into tensors."""
