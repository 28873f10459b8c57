"""The model store (blobs + manifests), GGUF facts, and pulls from Hugging Face with the catalog."""
