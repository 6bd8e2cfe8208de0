"""Analysis of fitted runs: spectra, reconstruction, the parameter model, scaling laws, held-out tests."""
