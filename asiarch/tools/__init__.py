"""Tools around the search: benchmarks, the kill-head stress run, the ASI-Arch importer."""
