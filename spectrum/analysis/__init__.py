"""Analysis of fitted runs: what the report stage computes from the losses and the fits.

- :mod:`.runs`: what is read of each run (its losses summed per sequence, a chunked reader of its
  per-token columns, the summary of its fits, the step-versus-smooth shares), its mean-loss curves
  under the bootstrap, and token passes (how a per-token computation is cut into token ranges);
- :mod:`.spectra`: learning-time spectra, their slices by annotation and the comparisons of the
  slices, and the loss-curve derivative a spectrum predicts;
- :mod:`.heldout`: the held-out-runs tests: targets, the per-token parameter model, the baselines
  and scaling laws, scores and verdicts, the predictions table;
- :mod:`.evaluation`: the entry point of the report stage: every run's spectra and every named test
  of ``reconstruction/scores.json``;
- :mod:`.stats`: the bootstrap over sequences, percentile intervals and R^2, shared by all;
- :mod:`.examples`: the token explorer's examples.
"""
