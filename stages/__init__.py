"""What happens to a record: pure functions on rows and batches (numpy / pyarrow), CPU only,
importable and testable without Ray or a GPU."""
