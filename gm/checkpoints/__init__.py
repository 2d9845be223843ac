"""Weight files: readers and writers, the official single-file layout, diffusers' layout, random weights."""
