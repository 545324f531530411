"""Data: the store schema, builders/importers, lazy store access, folds and batching."""
