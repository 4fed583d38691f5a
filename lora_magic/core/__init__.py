"""The torch-free core: settings, the event vocabulary, the run record and store, results read from
it, the machine, the recipe, formatting and model names. The Jupyter Server extension, the Lab and
a fresh kernel import only this floor."""
