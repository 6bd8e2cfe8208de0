"""Learning-time spectra: :mod:`.spectrum` (a spectrum and its bootstrap bands from per-sequence
bin sums), :mod:`.slices` (slices by annotation and the comparison of their learning times) and
:mod:`.reconstruct` (the derivative of the loss curve that a spectrum predicts)."""
