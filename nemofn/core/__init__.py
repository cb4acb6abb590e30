"""Trees, keys and explicit state objects shared by every nemofn package."""
