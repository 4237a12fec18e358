"""The embedded tiny model zoo: a seeded, offline build of the models, SAEs and token sets in fixtures/zoo.

`build.build_zoo(out_dir, config)` makes everything from Python's own standard library (prose, code) and a
seeded math word-problem generator; `cli.main` is the `zoo build|install|verify` command. Nothing here
needs the HuggingFace Hub.
"""
