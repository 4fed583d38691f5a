"""The model: loading a base, the layers LoRA targets, the kernel's session of base and adapters,
generation, merging, memory estimates and scoring."""
