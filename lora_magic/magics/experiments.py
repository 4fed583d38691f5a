"""`%lora eval` and sweeps: experiments over several runs."""
