"""Developer tools around the library's outputs (run as ``python -m spectrum.tools.<name>``); no
stage imports them."""
