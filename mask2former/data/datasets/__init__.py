"""Dataset loaders and registrations in the original formats."""
