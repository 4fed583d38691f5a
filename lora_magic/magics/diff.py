"""`%lora diff`: runs side by side."""
