"""Training data: sources, templates, tokens, the data report and cleaning, preparation."""
